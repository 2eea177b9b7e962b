"""Executors: the local process pool and Ray give what serial gives, survive dead and hung workers, resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import executor_plugins
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_config, write_config
from htx.cli import app
from htx.config import executor_override, parse_config
from htx.errors import ConfigError, HtxError
from htx.executors.plan import RunPayload, make_chunks, shipped_plugin_modules, trial_resources, worker_config
from htx.executors.worker import builder_for, run_chunk
from htx.grid import expand_grid
from htx.plugins import load_registry, module_plugin
from htx.run import Run
from htx.store import Store
from htx.workspace import Workspace

#: Metrics that measure time, not arithmetic: they differ between any two runs.
TIMING = {"model_ms", "model_ms_p10", "model_ms_p90", "stft_ms", "istft_ms", "separate_s", "rtf", "search_s", "peak_mem_mb"}
FIXTURES = [{"sine_440": {"duration": 1.0}}]
FX = "sine_440[duration=1.0]"


def _registry():
    return load_registry(extra_plugins=(executor_plugins,))


def _run(root: Path, **overrides):
    """Run a config in ``root`` (shared store and caches); the runner and trials by (precision, fixture)."""
    reg = _registry()
    cfg = parse_config(make_config(root, fixtures=FIXTURES, **overrides), registry=reg)
    with Store(cfg.store.path) as store:
        runner = Run(cfg, reg, store)
        run_id = runner.execute()
        trials = {(t.precision, t.fixture): t for t in store.trials([run_id])}
        return runner, trials, store.get_run(run_id)


def _arithmetic(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """fp32 and all-fp16, run serially: the results parallel runs must reproduce."""
    root = tmp_path_factory.mktemp("executors")
    # Workers here run one torch thread each; CPU kernels sum in a thread-count-dependent order, so the
    # serial run uses one thread too for the results to be bit-identical (they differ by ~1e-8 otherwise).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner, trials, run = _run(root, precision=["fp32", "all-fp16"])
    finally:
        torch.set_num_threads(threads)
    assert run["status"] == "finished" and all(t.status == "ok" for t in trials.values()) and len(trials) == 2
    return root, trials


def _same_as_serial(trials, expected) -> None:
    for key, want in expected.items():
        got = trials[key]
        assert got.status == "ok", (key, got.reason)
        assert _arithmetic(got.metrics) == _arithmetic(want.metrics), key
        assert got.info["worker"].rsplit(":", 1)[1] != str(os.getpid())  # ran in a worker, not here


# --- config -----------------------------------------------------------------------------------------


def test_executor_forms_and_overrides(tmp_path):
    def executor(value):
        return parse_config(make_config(tmp_path, executor=value)).executor

    assert executor("serial").kind == "serial" and executor("serial").local is None
    local = executor({"local": {"workers": 3, "retries": 1}})
    assert (local.kind, local.local.workers, local.local.retries) == ("local", 3, 1)
    assert executor("local").local.workers is None  # one per core, decided where the run starts
    dumped = parse_config(make_config(tmp_path, executor={"local": {"workers": 3}})).model_dump(mode="json")
    assert parse_config(dumped).executor == local.model_copy(update={"local": local.local.model_copy(update={"retries": 0})})
    with pytest.raises(ConfigError, match="executor is `serial`, `local`, `ray`"):
        executor({"pool": {}})
    with pytest.raises(ConfigError, match="executor.local.workers: Input should be greater than or equal to 1"):
        executor({"local": {"workers": 0}})

    def overridden(value, kind, workers):
        return parse_config(make_config(tmp_path, executor=value), override=executor_override(kind, workers)).executor

    kept = overridden({"local": {"workers": 2, "retries": 2}}, None, 4)
    assert (kept.kind, kept.local.workers, kept.local.retries) == ("local", 4, 2)
    assert overridden({"local": {"workers": 2}}, "serial", None).kind == "serial"
    assert overridden("serial", None, 2).local.workers == 2  # --workers alone means local
    with pytest.raises(ConfigError, match="--workers sets the size of the local process pool"):
        overridden("serial", "ray", 2)


def test_ray_without_ray_installed_fails_validation(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError) as exc:
        parse_config(make_config(tmp_path, executor={"ray": {"address": "auto"}}))
    assert exc.value.problems == [
        "executor: the `ray` executor needs Ray, an optional dependency: pip install 'htx[ray]' (or use executor `local`)"
    ]


def test_cli_rejects_unknown_executor(tmp_path):
    res = CliRunner().invoke(app, ["run", str(write_config(tmp_path)), "--executor", "threads", "--no-progress"])
    assert res.exit_code == 2 and "--executor 'threads': use one of serial, local, ray" in res.output


# --- planning ---------------------------------------------------------------------------------------


def test_chunks_group_by_combo_and_spread_over_workers(tmp_path):
    cfg = parse_config(make_config(
        tmp_path, precision=["fp32", "all-fp16", "curated-fp32"],
        fixtures=[{"sine_440": {"duration": 1.0, "frequency": 100.0 * (i + 1)}} for i in range(8)],
    ))
    specs = expand_grid(cfg)
    assert len(specs) == 24
    two = make_chunks(specs, 2, lambda s: False)
    assert [len(c.specs) for c in two] == [4] * 6  # about two chunks per worker
    assert all(len({s.combo_key for s in c.specs}) == 1 for c in two)
    assert sorted(s.trial_id for c in two for s in c.specs) == sorted(s.trial_id for s in specs)
    assert [len(c.specs) for c in make_chunks(specs, 16, lambda s: False)] == [1] * 24
    searched = make_chunks(specs, 16, lambda s: s.precision.name == "curated-fp32")
    assert len(searched[0].specs) == 8 and searched[0].specs[0].precision.name == "curated-fp32"  # one search, first
    assert len(searched) == 17
    longest = make_chunks(specs, 16, lambda s: False, cost=lambda s: s.fixture_index)  # longest first
    assert [c.specs[0].fixture_index for c in longest[:3]] == [7, 7, 7] and longest[-1].specs[0].fixture_index == 0


def test_resources_per_compute_unit(tmp_path):
    reg = _registry()
    cfg = parse_config(make_config(tmp_path, compute=[{"torch": {"device": d}} for d in ("cpu", "cuda", "mps")]), registry=reg)
    by_device = {s.compute.params["device"]: s for s in expand_grid(cfg)}
    assert trial_resources(by_device["cpu"], reg, {}) == {}
    assert trial_resources(by_device["cuda"], reg, {}) == {"GPU": 1.0}
    assert trial_resources(by_device["mps"], reg, {}) == {"macos": 1.0}
    assert trial_resources(by_device["cuda"], reg, {"torch": {"GPU": 0.5, "CPU": 2}}) == {"GPU": 0.5, "CPU": 2}
    key = by_device["cuda"].compute.key()
    assert trial_resources(by_device["cuda"], reg, {key: {"GPU": 2}, "torch": {"GPU": 0.5}}) == {"GPU": 2}
    coreml = [{"coreml": {"runtime": "native"}}, {"coreml": {"runtime": "emulated", "device": "cuda"}}, "coreml"]
    specs = expand_grid(parse_config(make_config(tmp_path, compute=coreml), registry=reg))
    assert [trial_resources(s, reg, {}) for s in specs] == [{"macos": 1.0}, {"GPU": 1.0}, {}]
    assert reg.get("compute", "coreml").disk_cached_prepare and not reg.get("compute", "torch").disk_cached_prepare


def test_plugins_must_be_importable_by_workers():
    assert shipped_plugin_modules(_registry()) == ("executor_plugins",)
    inline = module_plugin("inline_only", htx_register_precision_policies=lambda register: None)
    with pytest.raises(HtxError, match="plugin 'inline_only' was registered in this process only"):
        shipped_plugin_modules(load_registry(extra_plugins=(inline,)))


# --- local process pool -----------------------------------------------------------------------------


TIMEOUT = 12  # a loaded 2-core CI machine can take more than 6 s for one all-fp16 trial


def test_local_pool_matches_serial_and_survives_dead_and_hung_workers(serial):
    root, expected = serial
    runner, trials, run = _run(
        root, precision=["fp32", "all-fp16", {"kill-worker": {"how": "sigkill"}}, "hang"],
        executor={"local": {"workers": 2, "threads_per_worker": 1, "hang_grace_s": 1, "hang_timeouts": 2}}, trial_timeout_s=TIMEOUT,
    )
    assert run["status"] == "finished" and run["n_trials"] == 4
    _same_as_serial(trials, expected)
    killed = trials[("kill-worker[how='sigkill']", FX)]
    assert killed.status == "failed"
    assert killed.reason.startswith("worker died while running this trial: worker process ")
    assert killed.reason.endswith("died (killed by SIGKILL)")
    hung = trials[("hang", FX)]
    assert hung.status == "failed"
    silence = 2 * TIMEOUT + 1  # hang_timeouts 2: an honest tiny trial stays far inside 2 timeouts of silence
    assert hung.reason == f"timeout: the worker sent nothing for {silence} s (2 x trial_timeout_s + hang_grace_s) and was killed"
    report = runner.executor_report
    assert report.references_computed == 0  # every worker read the driver's cached references
    assert (report.deaths, report.hangs) == (1, 1)
    assert len({t.info["worker"] for t in trials.values() if t.status == "ok"}) >= 2


def test_resume_after_driver_crash(serial, tmp_path):
    marker = tmp_path / "crashed"
    cfg = make_config(tmp_path, fixtures=FIXTURES, precision=["fp32", {"crash-driver-once": {"marker": str(marker)}}],
                      executor={"local": {"workers": 1}})
    cfg["store"]["cache_dir"] = str(serial[0] / "cache")  # the reference is already there
    driver = (
        "import json, os, sys, executor_plugins\n"
        "os.environ['HTX_TEST_DRIVER_PID'] = str(os.getpid())\n"
        "from htx.config import parse_config\nfrom htx.plugins import load_registry\n"
        "from htx.run import Run\nfrom htx.store import Store\n"
        "reg = load_registry(extra_plugins=(executor_plugins,))\n"
        "cfg = parse_config(json.loads(sys.argv[1]), registry=reg)\n"
        "with Store(cfg.store.path) as store:\n    Run(cfg, reg, store).execute()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", driver, json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # SIGKILLed by the trial
    with Store(cfg["store"]["path"]) as store:
        run_id = store.latest_run_id()
        run = store.get_run(run_id)  # nobody closed it; its driver is gone, so it reads as interrupted
        assert run["status"] == "interrupted" and "stopped without marking the run" in run["status_note"]
        before = {t.trial_id: t for t in store.trials([run_id])}
        assert [t.precision for t in before.values()] == ["fp32"]
        reg = _registry()
        # Resume with another executor (`htx run --resume RUN --executor serial`): trials do not depend on it.
        resumed = parse_config(cfg, registry=reg, override=executor_override("serial", None))
        Run(resumed, reg, store).execute(resume=run_id)
        after = {t.trial_id: t for t in store.trials([run_id])}
        assert len(after) == 2 and all(t.status == "ok" for t in after.values())
        assert all(after[k].finished_at == t.finished_at for k, t in before.items())  # not run again
        assert store.get_run(run_id)["status"] == "finished"


def test_workers_load_only_the_fixtures_their_chunks_need(tmp_path):
    """A worker reads the fixtures and references of its own trials (a search policy's: all of them), from
    the driver's disk cache (`local`) or its shared data (`ray`), and recomputes none."""
    reg = _registry()
    fixtures = [{"sine_440": {"duration": 1.0}}, {"white_noise": {"duration": 1.0}}]
    cfg = parse_config(make_config(tmp_path, fixtures=fixtures, precision=["fp32", "magnitude"]), registry=reg)
    driver = Workspace(cfg, reg)
    driver.load()  # what the driver does before dispatching: references land in the disk cache
    payload = RunPayload(run_id="r1", config=worker_config(cfg), model_hash=driver.model.hash, plugin_modules=(),
                         sys_path=tuple(sys.path))
    specs = {(s.precision.name, s.fixture_index): s for s in expand_grid(cfg)}

    def run(payload, spec, shared=None):
        events = list(run_chunk(payload, (spec,), shared))
        rec = events[-1][1]
        assert rec.status == "ok", rec.reason
        return builder_for(payload).workspace

    worker = run(payload, specs[("fp32", 1)])
    assert sorted(worker.fixtures) == [1] and sorted(worker.references) == [1]
    worker = run(payload, specs[("magnitude", 0)])  # its calibration pass may use any fixture
    assert sorted(worker.fixtures) == [0, 1] and sorted(worker.references) == [0, 1]
    assert worker.references_computed == 0

    shared = driver.shared_data()  # as Ray's object store hands it out: read-only arrays
    for arr in [*shared.references.values(), *(f.mix for f in shared.fixtures.values())]:
        arr.setflags(write=False)
    worker = run(dataclasses.replace(payload, run_id="r2"), specs[("fp32", 0)], shared)
    assert sorted(worker.fixtures) == [0] and sorted(worker.references) == [0]
    assert worker.fixtures[0].get().mix.flags.writeable and worker.references[0].get().flags.writeable
    assert worker.references_computed == 0


# --- Ray --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray executor tests need `pip install 'htx[ray]'`")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_matches_serial_and_survives_a_dead_worker(serial, ray_cluster):
    root, expected = serial
    runner, trials, run = _run(
        root, precision=["fp32", "all-fp16", "kill-worker"], executor={"ray": {"address": "auto", "retries": 1}},
    )
    assert run["status"] == "finished" and run["n_trials"] == 3
    _same_as_serial(trials, expected)
    killed = trials[("kill-worker", FX)]
    assert killed.status == "failed"
    assert killed.reason.startswith("worker died while running this trial: WorkerCrashedError")
    assert killed.reason.endswith("(tried 2 times)")  # retries: 1
    report = runner.executor_report
    assert report.references_computed == 0  # references came through the object store
    assert report.deaths == 2
    assert ray_cluster.is_initialized()  # htx leaves a cluster it did not start running


def test_ray_tasks_run_in_the_main_thread(ray_cluster):
    """The in-process trial deadline (SIGALRM) needs it; the driver's silence limit covers the rest."""

    @ray_cluster.remote
    def main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    assert ray_cluster.get(main_thread.remote()) is True


def test_ray_options_from_resources():
    pytest.importorskip("ray")
    from htx.executors.ray_backend import ray_options

    assert ray_options({"CPU": 1.0}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_options({"CPU": 1.0, "GPU": 1, "macos": 1, "memory": 2e9}) == {
        "num_cpus": 1.0, "num_gpus": 1, "memory": 2e9, "resources": {"macos": 1},
    }
