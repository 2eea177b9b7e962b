from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import write_config
from htx.cli import app


def test_run_then_leaderboard_json_and_show(tmp_path):
    cfg = write_config(tmp_path, precision=["fp32", "all-fp16"])
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "htx leaderboard: test" in res.output and "all-fp16" in res.output
    db = str(tmp_path / "htx.sqlite")
    res = runner.invoke(app, ["leaderboard", "--db", db, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert {r["precision"] for r in rows} == {"fp32", "all-fp16"}
    assert all(r["status"] == "ok" and r["runtime"] == "torch:cpu" for r in rows)
    fp32 = next(r for r in rows if r["precision"] == "fp32")
    assert fp32["pass"] is True and fp32["fp16_op_fraction"] == 0.0
    run_id = rows[0]["run"]
    res = runner.invoke(app, ["show", run_id, "--db", db])
    assert res.exit_code == 0 and f"run {run_id}" in res.output and "trials: 2 ok" in res.output
    # resume of a finished run has nothing left to do
    res = runner.invoke(app, ["run", "--resume", run_id, "--db", db, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"run {run_id}: 2 trials (2 already done)" in res.output


def test_run_bad_config_exits_2_without_traceback(tmp_path):
    cfg = write_config(tmp_path, compute=["torhc"])
    res = CliRunner().invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2  # a usage error: nothing ran
    assert "Traceback" not in res.output
    assert "compute: unknown plugin 'torhc'. Did you mean 'torch'?" in res.output


def test_fixtures_list():
    res = CliRunner().invoke(app, ["fixtures", "list"])
    assert res.exit_code == 0
    for name in ("silence", "sine_440", "white_noise"):
        assert name in res.output


def test_show_prints_entry_keys_and_reasons_with_their_brackets(tmp_path):
    """Entry keys (`torch[device='cuda']`) and reasons are data, not rich markup: `show` printed `torch` for both
    compute entries of a grid (eager and compiled), so the failing rows could not be told apart."""
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("needs a machine without CUDA, so the cuda entries are unavailable")
    cfg = write_config(tmp_path, compute=[{"torch": {"device": "cuda"}}, {"torch": {"device": "cuda", "compile": "inductor"}}])
    db = tmp_path / "htx.sqlite"
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(cfg), "--no-progress"]).exit_code == 0
    res = runner.invoke(app, ["show", "latest", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "torch[device='cuda']" in res.output and "torch[compile='inductor',device='cuda']" in res.output, res.output
    assert "unavailable: compute torch[device=cuda]: CUDA is not available" in res.output
