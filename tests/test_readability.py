"""What a person reads: leaderboard labels that stay distinct, lines that fit 120 columns."""

from __future__ import annotations

from htx.summary import LABEL_WIDTH, fit_labels

NEAR_IDENTICAL = [
    "modules[keep_fp32=['', 'decoder.*', 'tdecoder.*']]",
    "modules[keep_fp32=['', 'decoder.*']]",
    "modules[keep_fp32=['', 'decoder.*', 'tdecoder.0']]",
    "modules[keep_fp32=['', 'decoder.3', 'tdecoder.*']]",
    "modules[keep_fp32=['', 'encoder.*', 'tdecoder.*']]",
]


def test_five_near_identical_labels_stay_distinct():
    shown = fit_labels([*NEAR_IDENTICAL, "fp32", "all-fp16"])
    assert len(set(shown.values())) == len(shown), shown
    assert all(len(v) <= LABEL_WIDTH for v in shown.values()), shown
    assert shown["fp32"] == "fp32" and shown["all-fp16"] == "all-fp16"  # short labels untouched
    # the part that differs survives: each label shows its own distinguishing module
    assert "encoder" in shown[NEAR_IDENTICAL[4]] and "decoder.3" in shown[NEAR_IDENTICAL[3]]
    assert "tdecoder.0" in shown[NEAR_IDENTICAL[2]]
    assert shown[NEAR_IDENTICAL[1]] == "modules[…'decoder.*']]"


def test_the_leaderboard_table_shows_them_distinct_in_120_columns():
    from rich.console import Console

    from htx.summary import summary_table

    rows = [{"run": "r", "trial": str(i), "surgery": "full-hybrid", "precision": p, "stft": "torch", "compute": "torch",
             "fixture": "sine_440", "runtime": "torch:cpu", "status": "ok", "pass": True, "emulated": False,
             "stft_emulated": False, "stft_parity_ok": True, "snr_db": 60.0 + i, "sdr_delta_db": None,
             "fp16_op_fraction": 0.9, "partitions": 3, "model_ms": 10.0, "evaluations": None, "max_abs_diff": 0.0,
             "reason": "", "pareto": False}
            for i, p in enumerate(NEAR_IDENTICAL)]
    console = Console(width=120, record=True)
    console.print(summary_table(rows))
    text = console.export_text()
    lines = [line for line in text.splitlines() if "modules[" in line or "…=" in line]
    assert len(lines) == 5 and len({line[: LABEL_WIDTH + 2].strip() for line in lines}) == 5, text
    assert all(len(line) <= 120 for line in text.splitlines())


def test_a_40_combination_pareto_plot_stays_readable(tmp_path):
    """40 combinations: every point numbered (the numbers listed under the plot), no text outside the figure
    (matplotlib's renderer measures every label), a log latency axis when latencies span more than 10x."""
    import matplotlib

    matplotlib.use("Agg")
    from htx.report_plots import pareto_plot
    from htx.summary import axis_labels

    summary = []
    for i in range(40):
        summary.append({"run": "r", "surgery": "full-hybrid", "precision": f"modules[keep_fp32=['encoder.{i % 5}', 'decoder.{i}']]",
                        "stft": ["torch", "numpy"][i % 2], "compute": ["torch", "coreml"][i % 2], "runtime": ["torch:cpu", "coreml:emulated"][i % 2],
                        "emulated": i % 2 == 1, "snr_db": 40.0 + i * 0.7, "model_ms": 2.0 * (1.12 ** i), "pass": i > 20})
    problems: list[str] = []
    drawn, numbered = pareto_plot(summary, 60.0, tmp_path / "p.png", axis_labels(summary), problems)
    assert drawn == 40 and [n["n"] for n in numbered] == list(range(1, 41))
    assert len({n["combination"] for n in numbered}) == 40  # each row of the table tells its combination
    assert problems == [], problems
    assert (tmp_path / "p.png").stat().st_size > 20000
