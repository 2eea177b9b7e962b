from __future__ import annotations

import json
import math
import sqlite3

import pytest
from typer.testing import CliRunner

from htx.cli import app
from htx.errors import HtxError
from htx.leaderboard import collect, export
from htx.store import SCHEMA_VERSION, Store, TrialRecord


def _rec(run_id, tid, idx, precision, fixture, status="ok", **metrics):
    return TrialRecord(run_id=run_id, trial_id=tid, idx=idx, surgery="full-hybrid", precision=precision, stft="torch",
                       compute="torch", fixture=fixture, status=status, runtime="torch:cpu", metrics=metrics,
                       reason=None if status == "ok" else "non-finite output: 3 NaN, 0 Inf")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    run = s.create_run("demo", {"targets": {"snr_db": 60}}, "c.yaml", "0.1.0", "host")
    s.write_trial(_rec(run, "a", 0, "fp32", "sine", snr_db=140.0, max_abs_diff=1e-7, model_ms=10.0, fp16_op_fraction=0.0, within_tol=True, nan_count=0))
    s.write_trial(_rec(run, "b", 1, "all-fp16", "sine", snr_db=55.5, max_abs_diff=0.002, model_ms=4.0, fp16_op_fraction=1.0, within_tol=False, nan_count=0))
    s.write_trial(_rec(run, "c", 2, "curated-fp32", "sine", snr_db=70.25, max_abs_diff=0.0005, model_ms=6.0, fp16_op_fraction=0.9, within_tol=False, nan_count=0, evaluations=7))
    s.write_trial(_rec(run, "d", 3, "slowpoke", "sine", snr_db=60.0, max_abs_diff=0.001, model_ms=12.0, fp16_op_fraction=0.5, within_tol=False, nan_count=0))
    s.write_trial(_rec(run, "e", 4, "broken", "sine", status="failed", nan_count=3))
    s.run_id = run
    yield s
    s.close()


def test_round_trip_and_schema_version(store, tmp_path):
    trials = {t.trial_id: t for t in store.trials([store.run_id])}
    assert trials["c"].metrics["snr_db"] == 70.25 and trials["c"].metrics["evaluations"] == 7
    assert trials["a"].metrics["within_tol"] == 1.0
    assert store.get_run(store.run_id)["n_trials"] == 5
    assert set(store.trial_statuses(store.run_id)) == {"a", "b", "c", "d", "e"}
    # rewriting a trial replaces it atomically (no duplicate metrics)
    store.write_trial(_rec(store.run_id, "a", 0, "fp32", "sine", snr_db=141.0, model_ms=10.0))
    assert {t.trial_id: t for t in store.trials([store.run_id])}["a"].metrics == {"snr_db": 141.0, "model_ms": 10.0}
    con = sqlite3.connect(tmp_path / "r.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(HtxError, match="schema version 999"):
        Store(tmp_path / "r.sqlite")


def test_unknown_run_and_empty_store(tmp_path):
    s = Store(tmp_path / "empty.sqlite")
    with pytest.raises(HtxError, match=r"No results in .*empty.sqlite. Run `htx run CONFIG` first."):
        collect(s)
    with pytest.raises(HtxError, match="no run 'nope'"):
        s.get_run("nope")


def test_pareto_pass_sort_where(store):
    rows = collect(store)
    by = {r["precision"]: r for r in rows}
    assert [r["precision"] for r in rows] == ["fp32", "curated-fp32", "slowpoke", "all-fp16", "broken"]
    assert by["fp32"]["pareto"] and by["curated-fp32"]["pareto"] and by["all-fp16"]["pareto"]
    assert not by["slowpoke"]["pareto"]  # fp32 is both more accurate and faster
    assert by["fp32"]["pass"] and by["curated-fp32"]["pass"] and by["slowpoke"]["pass"]
    assert not by["all-fp16"]["pass"] and not by["broken"]["pass"]
    assert [r["precision"] for r in collect(store, sort="model_ms")] == ["all-fp16", "curated-fp32", "fp32", "slowpoke", "broken"]
    assert [r["precision"] for r in collect(store, sort="-fp16_op_fraction")][:2] == ["all-fp16", "curated-fp32"]
    assert [r["precision"] for r in collect(store, where="snr_db > 60 and model_ms < 10")] == ["curated-fp32"]
    assert [r["precision"] for r in collect(store, where='status != "ok" or precision in ["fp32"]')] == ["fp32", "broken"]
    with pytest.raises(HtxError, match="unknown column 'snr'"):
        collect(store, where="snr > 1")
    with pytest.raises(HtxError, match="unknown column 'bogus'"):
        collect(store, sort="bogus")
    with pytest.raises(HtxError, match="--where"):
        collect(store, where="__import__('os')")


def test_exports_exact(store):
    rows = collect(store, where='precision in ["fp32", "broken"]')
    run = store.run_id
    assert export(rows, "csv") == (
        "run,trial,surgery,precision,stft,compute,fixture,runtime,status,pass,pareto,snr_db,max_abs_diff,sdr_db,sdr_delta_db,"
        "fp16_op_fraction,partitions,casts,evaluations,model_ms,stft_ms,istft_ms,rtf,stft_parity,stft_parity_ok,reason\n"
        f"{run},a,full-hybrid,fp32,torch,torch,sine,torch:cpu,ok,True,True,140.0,1e-07,,,0.0,,,,10.0,,,,,,\n"
        f"{run},e,full-hybrid,broken,torch,torch,sine,torch:cpu,failed,False,False,,,,,,,,,,,,,,,"
        "\"non-finite output: 3 NaN, 0 Inf\"\n"
    )
    data = json.loads(export(rows, "json"))
    assert data[0] == {
        "run": run, "trial": "a", "surgery": "full-hybrid", "precision": "fp32", "stft": "torch", "compute": "torch", "fixture": "sine",
        "runtime": "torch:cpu", "status": "ok", "pass": True, "pareto": True, "snr_db": 140.0, "max_abs_diff": 1e-07,
        "sdr_db": None, "sdr_delta_db": None, "fp16_op_fraction": 0.0, "partitions": None, "casts": None, "evaluations": None, "model_ms": 10.0,
        "stft_ms": None, "istft_ms": None, "rtf": None, "stft_parity": None, "stft_parity_ok": None, "reason": "",
    }
    assert export(rows, "md") == (
        "| trial | surgery | precision | stft | compute | fixture | runtime | status | pass | pareto | snr_db | max_abs_diff | sdr_db | "
        "sdr_delta_db | fp16_op_fraction | partitions | casts | evaluations | model_ms | stft_ms | istft_ms | rtf | stft_parity | stft_parity_ok | reason |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        "| a | full-hybrid | fp32 | torch | torch | sine | torch:cpu | ok | yes | yes | 140.00 | 1e-07 |  |  | 0.00 |  |  |  | 10.00 |  |  |  |  |  |  |\n"
        "| e | full-hybrid | broken | torch | torch | sine | torch:cpu | failed | no | no |  |  |  |  |  |  |  |  |  |  |  |  |  |  | non-finite output: 3 NaN, 0 Inf |\n"
    )


def test_json_export_has_numbers_only_and_flags_non_finite_values():
    from htx.leaderboard import columns

    rows = [{k: None for k in columns()} | {"precision": "all-fp16", "snr_db": -math.inf, "max_abs_diff": math.inf, "model_ms": 2.5},
            {k: None for k in columns()} | {"precision": "fp32", "snr_db": 140.0, "model_ms": 3.0}]
    text = export(rows, "json")
    def no_constants(name):
        raise AssertionError(f"JSON constant {name} in the export")

    silent, ok = json.loads(text, parse_constant=no_constants)
    assert silent["snr_db"] is None and silent["nonfinite"] == {"snr_db": "-inf", "max_abs_diff": "inf"}
    assert silent["model_ms"] == 2.5 and ok["snr_db"] == 140.0 and "nonfinite" not in ok
    assert all(not isinstance(v, str) for k, v in silent.items() if k in ("snr_db", "max_abs_diff", "model_ms"))


def test_leaderboard_cli(store, tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "r.sqlite")
    res = runner.invoke(app, ["leaderboard", "--db", db, "--format", "json", "--sort", "-snr_db"])
    assert res.exit_code == 0, res.output
    assert [r["precision"] for r in json.loads(res.output)] == ["fp32", "curated-fp32", "slowpoke", "all-fp16", "broken"]
    res = runner.invoke(app, ["leaderboard", "--db", db, "--by", "fixture"])
    assert res.exit_code == 0 and "curated-fp32" in res.output and "★" in res.output
    res = runner.invoke(app, ["leaderboard", "--db", db])  # the summary: one row per combination
    assert res.exit_code == 0 and "curated-fp32" in res.output and "one row per combination" in res.output
    assert runner.invoke(app, ["leaderboard", "--db", db, "--by", "stem"]).exit_code == 1
    res = runner.invoke(app, ["leaderboard", "--db", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 1 and "No results in" in res.output and "htx run CONFIG" in res.output
    res = runner.invoke(app, ["leaderboard", "--db", db, "--format", "xml"])
    assert res.exit_code == 1 and "unknown --format 'xml'" in res.output
    res = runner.invoke(app, ["show", store.run_id, "--db", db])
    assert res.exit_code == 0, res.output
    assert "trials: 1 failed, 4 ok" in res.output and "non-finite output: 3 NaN" in res.output


def test_the_main_jobs_summary_fits_120_columns(tmp_path):
    """Rows shaped like `htx run configs/ane_fp16.yaml` (plus a second compute entry): the default table, at
    120 columns, fits without wrapping or cutting a label."""
    from rich.console import Console

    from htx.summary import summary_table

    computes = ["coreml[runtime='auto',units='CPU_AND_NE']", "coreml[accumulate='fp16',runtime='auto',units='CPU_AND_NE']"]
    precisions = ["fp32", "all-fp16", "curated-fp32", "sensitivity[cost='partitions',max_seconds=120]"]
    with Store(tmp_path / "m.sqlite") as st:
        run_id = st.create_run("ane_fp16", {"targets": {"snr_db": 63}}, None, "0", "h")
        i = 0
        for c in computes:
            for p in precisions:
                for b in ("torch", "numpy", "vdsp"):
                    for fx in ("sine_440", "white_noise", "music_a"):
                        st.write_trial(TrialRecord(
                            run_id, f"t{i}", i, fx, "ok", surgery="full-hybrid", precision=p, stft=b, compute=c,
                            runtime="coreml:emulated", info={"emulated": True, "stft_emulated": b == "vdsp"},
                            metrics={"snr_db": 60.0 + i % 9, "max_abs_diff": 1e-3, "nan_count": 0, "inf_count": 0, "within_tol": 0,
                                     "fp16_op_fraction": 0.5, "partitions": 9, "model_ms": 1234.5, "sdr_delta_db": -0.001,
                                     "evaluations": 80 if p.startswith("sensitivity") else None}))
                        i += 1
        rows = collect(st, run=run_id)
    console = Console(width=120, record=True)
    console.print(summary_table(rows, title=f"htx leaderboard: ane_fp16 (run {run_id})"))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    body = [line for line in lines if line.strip().startswith(("fp32", "all-fp16", "curated-fp32", "sensitivity"))]
    assert len(body) == len(computes) * len(precisions) * 3  # one row per combination, none wrapped
    assert "…" not in text and "coreml[accumulate=fp16]" in text and "ms (emu)" in text and "sensitivity" in text
    assert "coreml[runtime" not in text  # options shown only where rows differ
