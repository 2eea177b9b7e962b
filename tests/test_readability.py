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
