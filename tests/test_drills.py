"""Bad-input drills (issue 24): each a real fault, each a clear message and the right exit code, no traceback."""

from __future__ import annotations

import os

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_config, write_config
from htx.cli import app
from htx.errors import SHOWN_PROBLEMS, HtxError
from htx.leaderboard import compile_where

FX = [{"sine_440": {"duration": 1.0}}]


def test_a_config_that_is_not_utf8_is_a_usage_error(tmp_path):
    bad = tmp_path / "a.yaml"
    bad.write_bytes(bytes(range(128, 256)) * 16)
    for cmd in (["run", str(bad), "--no-progress"], ["validate", str(bad)]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == 2 if cmd[0] == "run" else res.exit_code != 0, res.output
        assert "not UTF-8 text" in res.output and "Traceback" not in res.output, res.output
        assert not isinstance(res.exception, UnicodeDecodeError)


def test_a_folder_as_config_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(app, ["run", str(tmp_path), "--no-progress"])
    assert res.exit_code == 2 and "is a folder" in res.output, res.output


def test_thousands_of_config_problems_are_summarised(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(make_config(tmp_path, precision=["fp32"] * 5000)))
    res = CliRunner().invoke(app, ["run", str(path), "--no-progress"])
    assert res.exit_code == 2, res.output
    bullets = [line for line in res.output.splitlines() if line.strip().startswith("• ")]
    assert len(bullets) == SHOWN_PROBLEMS + 1, len(bullets)
    assert "appears twice" in res.output and "and 4979 more problems" in res.output


@pytest.mark.parametrize("expr", [
    "snr_db < 0 and __import__('os').system('id')",
    "snr_db < 0 and nope > 1",
    "snr_db < 0 and snr_db.real > 1",
    "snr_db < 0 and (lambda: 1)()",
    "snr_db < 0 or snr_db @ 2",
])
def test_where_is_checked_whole_before_any_row_is_read(expr):
    with pytest.raises(HtxError, match="--where"):
        compile_where(expr)  # no rows at all: the check is of the expression, not of what evaluation reached


def test_where_still_accepts_what_the_readme_shows():
    keep = compile_where('snr_db > 40 and precision == "all-fp16" or not (stft in ["numpy"])')
    assert keep({"snr_db": 50.0, "precision": "all-fp16", "stft": "numpy"})
    assert not keep({"snr_db": 30.0, "precision": "all-fp16", "stft": "numpy"})


def test_export_out_problems_name_the_path(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    runner = CliRunner()
    db = str(tmp_path / "none.sqlite")  # never opened: --out is checked first
    res = runner.invoke(app, ["export", "r/t", "--out", str(afile / "x.mlpackage"), "--db", db])
    assert res.exit_code == 1 and f"cannot write {afile / 'x.mlpackage'}: {afile} is a file" in res.output, res.output
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    # tests run as root, which ignores permission bits: patch what a read-only folder answers
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.path.abspath(p) == str(ro) else real(p, mode, *a, **k))
    res = runner.invoke(app, ["export", "r/t", "--out", str(ro / "deep" / "m.mlpackage"), "--db", db])
    assert res.exit_code == 1 and f"{ro} is read-only" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "none.sqlite").exists()


def test_validate_is_unchanged_for_a_good_config(tmp_path):
    res = CliRunner().invoke(app, ["validate", str(write_config(tmp_path, fixtures=FX))])
    assert res.exit_code == 0, res.output


def test_a_store_that_cannot_be_written_is_a_clear_error_and_the_run_resumes(tmp_path):
    """A real write failure: `ulimit -f` (a stand-in for a full disk) in a child shell. The driver says which
    store and why, exits 1 with no traceback, the store stays intact, and `--resume` completes the run once
    the limit is gone. Marking the run failed is a write too, so under the limit the driver cannot; the next open
    finds its driver gone and marks it interrupted, with the resume command (`htx show` prints it)."""
    import sqlite3
    import subprocess
    import sys

    from htx.store import Store

    cfg = write_config(tmp_path, precision=["fp32", "all-fp16"],
                       fixtures=[{"sine_440": {"duration": 1.0}}, {"white_noise": {"duration": 1.0}}])
    db = tmp_path / "htx.sqlite"
    res = subprocess.run(["bash", "-c", f'ulimit -f 56; "{sys.executable}" -m htx.cli run "{cfg}" --no-progress'],
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-2000:]
    assert f"cannot write to the results database {db}" in out and "htx run --resume" in out, out[-2000:]
    assert "Traceback" not in out
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(db) as store:
        run_id = store.latest_run_id()
        run = store.get_run(run_id)
    assert run["status"] == "interrupted" and f"htx run --resume {run_id}" in run["status_note"], run
    shown = CliRunner().invoke(app, ["show", run_id, "--db", str(db)])
    assert shown.exit_code == 0 and "status=interrupted" in shown.output and "stopped without marking the run" in shown.output
    res = CliRunner().invoke(app, ["run", "--resume", run_id, "--db", str(db), "--no-progress"])
    assert res.exit_code == 0, res.output
    with Store(db) as store:
        assert len(store.trials([run_id])) == 4 and store.get_run(run_id)["status"] == "finished"


def _lying_wav(path):
    import numpy as np
    import soundfile as sf

    sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal((4410, 2))).astype(np.float32), 44100, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    i = raw.index(b"data")
    raw[i + 4:i + 8] = (10_000_000).to_bytes(4, "little")  # the header claims 10 MB of samples
    path.write_bytes(bytes(raw))
    return path


def test_a_wav_whose_header_lies_is_reported_and_refused(tmp_path):
    wav = _lying_wav(tmp_path / "lies.wav")
    cfg = write_config(tmp_path, fixtures=[str(wav)])
    res = CliRunner().invoke(app, ["validate", str(cfg)])
    assert res.exit_code != 0 and "is truncated: its WAV header declares 10000000 bytes" in res.output, res.output
    res = CliRunner().invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 2 and "is truncated" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fixture_errors_name_what_the_path_really_is(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    cases = {str(fifo): "is a named pipe (FIFO)", "/dev/zero": "is a character device", str(loop): "symbolic link loop"}
    for path, words in cases.items():
        res = CliRunner().invoke(app, ["validate", str(write_config(tmp_path, fixtures=[path]))])
        assert res.exit_code != 0 and words in res.output and "Traceback" not in res.output, (path, res.output)


def test_an_fp32_trial_exports_with_no_fp16_op_through_another_unit(tmp_path):
    """Main printed '4 of 599 compute ops in FP16' exporting an fp32 trial: Core ML ops under a torch module
    whose every source type the Core ML module also has were left FP16 by the module rule. Fixed in
    htx.identity: such an op takes its module's decision."""
    from htx.store import Store

    cfg = write_config(tmp_path, fixtures=FX, precision=["fp32"])
    db = str(tmp_path / "htx.sqlite")
    assert CliRunner().invoke(app, ["run", str(cfg), "--db", db, "--no-progress"]).exit_code == 0
    with Store(db) as store:
        (t,) = store.trials()
    res = CliRunner().invoke(app, ["export", f"{t.run_id}/{t.trial_id}", "--db", db, "--out", str(tmp_path / "m.mlpackage"),
                                   "--compute", "{coreml: {runtime: emulated, device: cpu}}"])
    assert res.exit_code == 0, res.output
    assert "\n0 of " in res.output and "compute ops in FP16" in res.output, res.output
