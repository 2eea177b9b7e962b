"""Fault injection: the seven holes the drills found (issue 14), each reproduced for real, plus the SIGINT,
SIGKILL, abort and hang drills on the serial and local executors.

Real faults, not mocks: a policy that calls ``os.abort()``, a hang that blocks SIGALRM, SIGINT and SIGKILL
sent to real ``htx run`` processes, several processes opening one SQLite file. The one simulation is the
read-only filesystem: tests run as root, which ignores permission bits, so ``os.access`` is patched to say
what a read-only mount says.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import executor_plugins
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import make_config, write_config
from htx.api import Assignment, StaticPolicy
from htx.cli import app
from htx.config import parse_config
from htx.errors import ConfigError, HtxError
from htx.plugins import build_registry, get_plugin_manager, load_registry, module_plugin
from htx.run import DIED, Run
from htx.store import Store

FX = [{"sine_440": {"duration": 1.0}}]
# `htx` as a user runs it, with the test policies of executor_plugins registered in `htx run` (only there:
# executors ship to workers the plugins a fresh registry would not have).
CLI_WITH_TEST_PLUGINS = (
    "import sys, executor_plugins, htx.plugins as p\n"
    "from htx.cli import main, run_cmd\n"
    "run_cmd.load_registry = lambda: p.load_registry(extra_plugins=(executor_plugins,))\n"
    "sys.argv[0] = 'htx'\nmain()\n"
)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}


def _registry():
    return load_registry(extra_plugins=(executor_plugins,))


def _execute(cfg_data, reg=None, resume=None, retry_failed=False):
    reg = reg or _registry()
    cfg = parse_config(cfg_data, registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run_id = run.execute(resume=resume, retry_failed=retry_failed)
        return run_id, {t.precision: t for t in store.trials([run_id])}, store.get_run(run_id)


# --- 1. --resume with another config ----------------------------------------------------------------


def test_resume_refuses_another_config_and_takes_the_stored_one(tmp_path):
    db = str(tmp_path / "m.sqlite")
    a = write_config(tmp_path, "a.yaml", fixtures=FX, precision=["fp32"])
    b = write_config(tmp_path, "b.yaml", fixtures=FX, precision=["all-fp16"])
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(a), "--db", db, "--no-progress"])
    assert res.exit_code == 0, res.output
    with Store(db) as store:
        run_id = store.latest_run_id()
    res = runner.invoke(app, ["run", str(b), "--db", db, "--resume", run_id, "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "cannot resume run" in res.output and "precision: the run has [fp32], this config [all-fp16]" in res.output
    assert f"htx run --resume {run_id}" in res.output and "Traceback" not in res.output
    with Store(db) as store:
        assert [t.precision for t in store.trials([run_id])] == ["fp32"]  # nothing mixed in
    # without CONFIG the stored one is used; the executor may change on resume
    res = runner.invoke(app, ["run", "--resume", run_id, "--db", db, "--no-progress", "--executor", "local"])
    assert res.exit_code == 0 and "1 trials (1 already done)" in res.output, res.output


class Flaky(StaticPolicy):
    """Fails until ``works`` is set (a bug fixed between two runs)."""

    name = "flaky"
    works = False

    def select(self, ops):
        if not type(self).works:
            raise RuntimeError("flaky policy broke")
        return Assignment.all_fp16(ops)


def test_resume_retry_failed_runs_failed_trials_again(tmp_path):
    reg = build_registry(get_plugin_manager(extra_plugins=(module_plugin("flaky", htx_register_precision_policies=lambda register: register(Flaky)),)))
    data = make_config(tmp_path, fixtures=FX, precision=["fp32", "flaky"])
    run_id, trials, _ = _execute(data, reg)
    assert trials["flaky"].status == "failed" and trials["fp32"].status == "ok"
    Flaky.works = True
    try:
        _, again, _ = _execute(data, reg, resume=run_id)  # plain --resume: recorded trials are done
        assert again["flaky"].status == "failed"
        _, again, run = _execute(data, reg, resume=run_id, retry_failed=True)
    finally:
        Flaky.works = False
    assert again["flaky"].status == "ok" and again["fp32"].finished_at == trials["fp32"].finished_at
    assert run["status"] == "finished"


# --- 2. a trial that kills its process, under serial -------------------------------------------------


@pytest.mark.parametrize("executor", ["serial", {"local": {"workers": 1}}])
def test_an_aborting_trial_is_a_failed_row_and_the_run_goes_on(tmp_path, executor):
    data = make_config(tmp_path, fixtures=FX, precision=["fp32", {"kill-worker": {"how": "abort"}}, "all-fp16"],
                       executor=executor)
    _, trials, run = _execute(data)
    assert run["status"] == "finished"
    assert trials["fp32"].status == "ok" and trials["all-fp16"].status == "ok"
    dead = trials["kill-worker[how='abort']"]
    assert dead.status == "failed" and "SIGABRT" in dead.reason, dead.reason


def test_in_process_serial_records_the_trial_that_killed_it_on_resume(tmp_path):
    """``isolate: false``: the abort ends the run; ``--resume`` records that trial as failed, runs the rest."""
    data = make_config(tmp_path, fixtures=FX, precision=["fp32", {"kill-worker": {"how": "abort"}}, "all-fp16"],
                       executor={"serial": {"isolate": False}})
    script = (
        "import json, sys, executor_plugins\nfrom htx.config import parse_config\nfrom htx.plugins import load_registry\n"
        "from htx.run import Run\nfrom htx.store import Store\n"
        "reg = load_registry(extra_plugins=(executor_plugins,))\ncfg = parse_config(json.loads(sys.argv[1]), registry=reg)\n"
        "with Store(cfg.store.path) as store:\n    Run(cfg, reg, store).execute()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(data)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-2000:]
    with Store(data["store"]["path"]) as store:
        run_id = store.latest_run_id()
        assert store.get_run(run_id)["current_trial"] is not None
    _, trials, run = _execute(data, resume=run_id)
    dead = trials["kill-worker[how='abort']"]
    assert dead.status == "failed" and dead.reason.startswith(DIED)
    assert trials["fp32"].status == "ok" and trials["all-fp16"].status == "ok" and run["status"] == "finished"


# --- 7. a hang that ignores the timeout, under serial ------------------------------------------------


def test_serial_watchdog_kills_a_trial_that_ignores_its_timeout(tmp_path):
    # trial_timeout_s is also every honest phase's deadline (preparing, the policy, the measurement): 10 s
    # leaves the tiny model's fp32 trial a wide margin on a loaded 2-core machine, where 5 s did not.
    data = make_config(tmp_path, fixtures=FX, precision=["hang", "fp32"], trial_timeout_s=10.0,
                       executor={"serial": {"hang_grace_s": 1.0, "hang_timeouts": 2}})
    _, trials, run = _execute(data)  # the hang sleeps 600 s: the run ending at all is the watchdog's work
    assert trials["hang"].status == "failed" and "sent nothing for 21 s (2 x trial_timeout_s" in trials["hang"].reason, trials["hang"].reason
    assert trials["fp32"].status == "ok" and run["status"] == "finished"


# --- SIGINT and SIGKILL of the driver ---------------------------------------------------------------


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_sigint_then_resume(tmp_path, executor):
    """SIGINT while a trial is surely running (the ``gate`` policy holds it until a file appears): exit 130,
    the run is stored interrupted with what finished, and ``--resume`` completes it. The test waits for
    states (the gate's marker and one stored trial), never for time, so a fast machine cannot finish the
    run before the signal arrives."""
    started, release = tmp_path / "gate-started", tmp_path / "gate-release"
    gate = {"gate": {"started": str(started), "release": str(release)}}
    cfg = write_config(tmp_path, fixtures=[{"sine_440": {"duration": 1.0}}, {"white_noise": {"duration": 1.0}}],
                       precision=["fp32", gate], executor=executor)
    db = tmp_path / "htx.sqlite"
    # SIGINT at its default in the child, whatever this process inherited (a job started in the background by a
    # non-interactive shell ignores SIGINT, and Python then never turns it into KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_TEST_PLUGINS, "run", str(cfg), "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def stored() -> int:
        try:
            with Store(db) as store:
                return len(store.trials())
        except HtxError:
            return 0

    deadline = time.time() + 600  # a bound for a broken run, not a timing assertion
    while not (started.exists() and db.exists() and stored() >= 1):
        assert proc.poll() is None, f"the run ended before the gate held a trial:\n{proc.stdout.read()[-2000:]}"
        assert time.time() < deadline, "the gate trial never started"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:]
    assert "Interrupted." in out and "Traceback" not in out
    with Store(db) as store:
        run_id = store.latest_run_id()
        assert store.get_run(run_id)["status"] == "interrupted"
        done = store.trials([run_id])
    assert 1 <= len(done) < 4 and all(t.precision == "fp32" for t in done), [(t.precision, t.status) for t in done]
    release.write_text("")  # the gate lets its trials through on resume
    res = subprocess.run([sys.executable, "-c", CLI_WITH_TEST_PLUGINS, "run", "--resume", run_id, "--db", str(db),
                          "--no-progress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    with Store(db) as store:
        trials = store.trials([run_id])
        assert len(trials) == 4 and all(t.status == "ok" for t in trials) and store.get_run(run_id)["status"] == "finished"


def test_sigterm_is_an_interruption_that_says_how_to_resume(tmp_path):
    """`kill PID` of the driver (SIGTERM) while a trial is held: the run is stored interrupted, the user is told
    how to resume, exit 143, no traceback (main left the run `running` and printed nothing)."""
    started, release = tmp_path / "gate-started", tmp_path / "gate-release"
    cfg = write_config(tmp_path, fixtures=FX, precision=["fp32", {"gate": {"started": str(started), "release": str(release)}}],
                       executor="serial")
    db = tmp_path / "htx.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_TEST_PLUGINS, "run", str(cfg), "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 600  # a bound for a broken run, not a timing assertion
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, "the gate trial never started"
        time.sleep(0.1)
    proc.terminate()  # the driver alone, as `kill PID` does
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-2000:]
    assert "Interrupted by SIGTERM." in out and "htx run --resume" in out and "Traceback" not in out, out[-2000:]
    with Store(db) as store:
        assert store.get_run(store.latest_run_id())["status"] == "interrupted"


def test_sigkill_of_a_serial_driver_then_resume(tmp_path):
    marker = tmp_path / "crashed"
    data = make_config(tmp_path, fixtures=FX, precision=["fp32", {"crash-driver-once": {"marker": str(marker)}}],
                       executor="serial")
    script = (
        "import json, os, sys, executor_plugins\nos.environ['HTX_TEST_DRIVER_PID'] = str(os.getpid())\n"
        "from htx.config import parse_config\nfrom htx.plugins import load_registry\nfrom htx.run import Run\n"
        "from htx.store import Store\nreg = load_registry(extra_plugins=(executor_plugins,))\n"
        "cfg = parse_config(json.loads(sys.argv[1]), registry=reg)\n"
        "with Store(cfg.store.path) as store:\n    Run(cfg, reg, store).execute()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(data)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with Store(data["store"]["path"]) as store:
        run_id = store.latest_run_id()
    _, trials, run = _execute(data, resume=run_id)
    assert {p: t.status for p, t in trials.items()} == {"fp32": "ok", f"crash-driver-once[marker={str(marker)!r}]": "ok"}
    assert run["status"] == "finished"


# --- 3. bad --db paths ------------------------------------------------------------------------------


def test_bad_store_paths_are_clear_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    runner = CliRunner()
    cfg = write_config(tmp_path, fixtures=FX)
    for db, words in [
        (afile / "x.sqlite", "is a file, not a folder"),
        (Path("/proc/newdir/x.sqlite"), "cannot create the folder /proc/newdir"),
        (tmp_path, "is a directory"),
        (afile, "not an htx results database"),
    ]:
        res = runner.invoke(app, ["run", str(cfg), "--db", str(db), "--no-progress"])
        assert res.exit_code == 2 and words in res.output and "--db" in res.output, (db, res.output)
        assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
        if db != tmp_path and db != afile:
            res = runner.invoke(app, ["leaderboard", "--db", str(db)])
            assert res.exit_code == 1 and "Traceback" not in res.output


def test_a_store_on_a_read_only_filesystem_is_readable(tmp_path, monkeypatch):
    db = tmp_path / "ro" / "htx.sqlite"
    cfg = write_config(tmp_path, fixtures=FX)
    assert CliRunner().invoke(app, ["run", str(cfg), "--db", str(db), "--no-progress"]).exit_code == 0
    real = os.access
    ro = str(db.parent)
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p).startswith(ro) and mode & os.W_OK else real(p, mode, *a, **k))
    res = CliRunner().invoke(app, ["leaderboard", "--db", str(db), "--format", "json"])
    assert res.exit_code == 0 and len(json.loads(res.output)) == 1, res.output
    with Store(db) as store:
        run_id = store.latest_run_id()
        assert store.read_only
        with pytest.raises(HtxError, match="read-only"):
            store.update_run(run_id, status="x")
    assert CliRunner().invoke(app, ["show", run_id, "--db", str(db)]).exit_code == 0
    res = CliRunner().invoke(app, ["run", str(cfg), "--db", str(tmp_path / "ro" / "new.sqlite"), "--no-progress"])
    assert res.exit_code == 2 and "read-only" in res.output


# --- 4. fixtures that cannot be read ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    sr = 44100
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio " * 20)
    sf.write(str(d / "full.flac"), (np.random.default_rng(0).random((sr * 2, 2), np.float32) - 0.5) * 0.5, sr)
    data = (d / "full.flac").read_bytes()
    (d / "truncated.flac").write_bytes(data[: len(data) // 2])
    x = np.zeros((sr, 2), np.float32)
    x[100, 0] = np.nan
    sf.write(str(d / "nan.wav"), x, sr, subtype="FLOAT")
    sf.write(str(d / "six.wav"), np.zeros((sr, 6), np.float32), sr)
    (d / "folder.wav").mkdir()
    return d


@pytest.mark.parametrize("name, words", [
    ("empty.wav", "is empty (0 bytes)"), ("text.wav", "not a readable audio file"), ("truncated.flac", "truncated"),
    ("nan.wav", "non-finite samples"), ("six.wav", "has 6 channels; the model takes 2"), ("folder.wav", "is a directory"),
])
def test_validate_reports_unreadable_fixtures(tmp_path, bad_audio, name, words):
    cfg = write_config(tmp_path, fixtures=[str(bad_audio / name)])
    res = CliRunner().invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 1 and words in res.output and "fixtures.0" in res.output, res.output
    res = CliRunner().invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 2 and words in res.output  # refused before any trial


def test_separate_checks_channels_before_building_the_model(tmp_path, bad_audio):
    res = CliRunner().invoke(app, ["separate", str(bad_audio / "six.wav"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "has 6 channels; the model takes 2" in res.output
    assert "loading model" not in res.output and not (tmp_path / "o").exists()
    res = CliRunner().invoke(app, ["separate", str(bad_audio / "empty.wav"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "is empty (0 bytes)" in res.output


# --- 5. targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets, words", [
    ({"atol": -1.0e-4}, "targets.atol: Input should be greater than or equal to 0"),
    ({"rtol": -1.0}, "targets.rtol: Input should be greater than or equal to 0"),
    ({"snr_db": float("inf")}, "snr_db must be a finite number"),
    ({"stft_rtol": -1e-5}, "targets.stft_rtol"),
])
def test_targets_are_validated(tmp_path, targets, words):
    with pytest.raises(ConfigError) as exc:
        parse_config(make_config(tmp_path, targets=targets))
    assert any(words in p for p in exc.value.problems), exc.value.problems


# --- 6. a fresh store opened by several processes at once -------------------------------------------


def _open_and_write(path: str, barrier, i: int, errors) -> None:
    try:
        barrier.wait()
        with Store(path) as store:
            run_id = store.create_run(f"p{i}", {}, None, "0", "h")
            store.update_run(run_id, status="finished")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def test_a_fresh_store_opened_by_several_processes_at_once(tmp_path):
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(12):
        path = str(tmp_path / f"s{round_}.sqlite")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_and_write, args=(path, barrier, i, errors)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        with Store(path) as store:
            assert len(store.list_runs()) == 4
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found[:3]


# --- exit codes -------------------------------------------------------------------------------------


def test_exit_codes_and_the_check_gate(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "g.sqlite")
    ok = write_config(tmp_path, "ok.yaml", fixtures=FX, precision=["fp32", "all-fp16"])
    res = runner.invoke(app, ["run", str(ok), "--db", db, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["run", str(ok), "--db", db, "--no-progress", "--check"]).exit_code == 0
    assert runner.invoke(app, ["leaderboard", "--db", db, "--check"]).exit_code == 0
    strict = write_config(tmp_path, "strict.yaml", fixtures=FX, precision=["fp32", "all-fp16"],
                          targets={"snr_db": 200.0, "rtol": 0.0, "atol": 0.0})
    res = runner.invoke(app, ["run", str(strict), "--db", db, "--no-progress"])
    assert res.exit_code == 0, res.output  # missing a target is not a failure...
    res = runner.invoke(app, ["run", str(strict), "--db", db, "--no-progress", "--check"])
    assert res.exit_code == 1 and "miss the targets" in res.output  # ... unless --check says so
    res = runner.invoke(app, ["leaderboard", "--db", db, "--check"])
    assert res.exit_code == 1 and "miss the targets" in res.output
    failing = write_config(tmp_path, "failing.yaml", fixtures=FX, precision=["fp32"], trial_timeout_s=0.001)
    res = runner.invoke(app, ["run", str(failing), "--db", db, "--no-progress"])
    assert res.exit_code == 1 and "failed" in res.output
    assert runner.invoke(app, ["run", str(tmp_path / "missing.yaml"), "--db", db]).exit_code == 2
    assert runner.invoke(app, ["run", str(ok), "--retry-failed"]).exit_code == 2


