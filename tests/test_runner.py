"""End-to-end runner behaviour on a tiny model: trial isolation, unavailable plugins, resume, caches."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import make_config
from htx.api import Assignment, ComputeUnit, StaticPolicy
from htx.config import parse_config
from htx.plugins import build_registry, get_plugin_manager, module_plugin
from htx.run import Run
from htx.store import Store
from htx_plugins.compute.torch_unit import TorchUnit


class Exploding(StaticPolicy):
    """Raises while choosing."""

    name = "exploding"

    def select(self, ops):
        raise RuntimeError("policy exploded on purpose")


class Slow(StaticPolicy):
    """Takes far longer than the trial timeout."""

    name = "slow"

    def select(self, ops):
        deadline = time.time() + 600  # far past any trial_timeout_s a test sets
        while time.time() < deadline:
            time.sleep(0.01)
        return Assignment.all_fp32()


class NaNUnit(TorchUnit):
    """A compute unit whose output is NaN in one place."""

    name = "nan-unit"

    def compile(self, prepared, assignment):
        fwd = super().compile(prepared, assignment)

        def forward(*inputs):
            spec_out, wave_out = fwd(*inputs)
            wave_out = wave_out.clone()
            wave_out[..., 0, 0, 10] = float("nan")
            return spec_out, wave_out

        return forward


class OOMUnit(TorchUnit):
    """A compute unit that runs out of memory."""

    name = "oom-unit"

    def compile(self, prepared, assignment):
        def forward(*inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        return forward


class NeverUnit(ComputeUnit):
    """Cannot run anywhere."""

    name = "never"

    def available(self):
        return False, "needs hardware this machine lacks"

    def prepare(self, inner, example_inputs, cache_dir=None):
        raise AssertionError("an unavailable unit is never prepared")

    def ops(self, prepared):
        return []

    def compile(self, prepared, assignment):
        return prepared


def _registry():
    plugin = module_plugin(
        "test_isolation",
        htx_register_precision_policies=lambda register: (register(Exploding), register(Slow)),
        htx_register_compute_units=lambda register: (register(NaNUnit), register(OOMUnit), register(NeverUnit)),
    )
    return build_registry(get_plugin_manager(extra_plugins=(plugin,)))


def _run(tmp_path, registry, **overrides):
    cfg = parse_config(make_config(tmp_path, **overrides), registry=registry)
    with Store(cfg.store.path) as store:
        runner = Run(cfg, registry, store)
        run_id = runner.execute()
        return run_id, {(t.precision, t.compute, t.fixture): t for t in store.trials([run_id])}, store.get_run(run_id)


def test_failures_are_isolated_and_recorded(tmp_path):
    reg = _registry()
    run_id, trials, run = _run(
        tmp_path, reg,
        precision=["fp32", "exploding"],
        compute=[{"torch": {"device": "cpu"}}, "nan-unit", "oom-unit", "never"],
    )
    assert run["status"] == "finished" and run["n_trials"] == 8
    ok = trials[("fp32", "torch[device='cpu']", "sine_440[duration=1.0]")]
    assert ok.status == "ok" and ok.metrics["within_tol"] == 1.0 and ok.metrics["snr_db"] > 100
    exploded = trials[("exploding", "torch[device='cpu']", "sine_440[duration=1.0]")]
    assert exploded.status == "failed" and exploded.reason == "precision 'exploding'.select() raised RuntimeError: policy exploded on purpose"
    nan = trials[("fp32", "nan-unit", "sine_440[duration=1.0]")]
    assert nan.status == "failed" and nan.reason.startswith("non-finite output:") and nan.metrics["nan_count"] > 0
    oom = trials[("fp32", "oom-unit", "sine_440[duration=1.0]")]
    assert oom.status == "failed" and oom.reason.startswith("out of memory: OutOfMemoryError")
    never = trials[("fp32", "never", "sine_440[duration=1.0]")]
    assert never.status == "unavailable"
    assert never.reason == "unavailable: compute never: needs hardware this machine lacks"


def test_a_policy_past_the_timeout_is_a_failed_row_and_the_run_goes_on(tmp_path):
    # One slow trial, on its own: trial_timeout_s is also the deadline of every honest phase, so it is
    # generous (the tiny model's fp32 trial took 1.5 s on a 2-core machine beside a CPU hog) and the slow
    # policy waits it out once, not once per compute unit.
    _, trials, run = _run(tmp_path, _registry(), precision=["slow", "fp32"], trial_timeout_s=10)
    slow = trials[("slow", "torch[device='cpu']", "sine_440[duration=1.0]")]
    assert slow.status == "failed" and slow.reason.startswith("timeout: precision policy slow timed out after 10 s")
    assert trials[("fp32", "torch[device='cpu']", "sine_440[duration=1.0]")].status == "ok"
    assert run["status"] == "finished"


def test_fp16_trials_and_metrics(tmp_path):
    reg = build_registry(get_plugin_manager())
    _, trials, _ = _run(tmp_path, reg, precision=["fp32", "all-fp16", "curated-fp32"],
                        fixtures=[{"sine_440": {"duration": 2.3}}, {"silence": {"duration": 1.0}}])
    key = "sine_440[duration=2.3]"
    fp32, fp16, cur = (trials[(p, "torch[device='cpu']", key)] for p in ("fp32", "all-fp16", "curated-fp32"))
    assert fp32.metrics["fp16_op_fraction"] == 0.0 and fp16.metrics["fp16_op_fraction"] == 1.0
    assert 0.0 < cur.metrics["fp16_op_fraction"] < 1.0
    assert fp32.metrics["snr_db"] > 100  # our pipeline vs demucs apply_model across 3 overlapping segments
    assert 20 < fp16.metrics["snr_db"] < fp32.metrics["snr_db"]
    for t in (fp32, fp16, cur):
        assert t.status == "ok"
        for k in ("model_ms", "model_ms_p10", "model_ms_p90", "stft_ms", "istft_ms", "rtf", "max_abs_diff", "rel_l1"):
            assert k in t.metrics, k
        assert t.runtime == "torch:cpu"
    silent = trials[("all-fp16", "torch[device='cpu']", "silence[duration=1.0]")]
    assert silent.metrics["snr_db"] is None and silent.status == "ok"


class Interrupting(StaticPolicy):
    """Simulates Ctrl-C on its first use in a process."""

    name = "interrupting"
    calls = 0

    def select(self, ops):
        type(self).calls += 1
        if type(self).calls == 1:
            raise KeyboardInterrupt
        return Assignment.all_fp16(ops)


def test_interrupt_then_resume(tmp_path):
    plugin = module_plugin("interrupting", htx_register_precision_policies=lambda register: register(Interrupting))
    reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    cfg = parse_config(make_config(tmp_path, precision=["fp32", "interrupting"]), registry=reg)
    with Store(cfg.store.path) as store:
        runner = Run(cfg, reg, store)
        with pytest.raises(KeyboardInterrupt):
            runner.execute()
        run_id = runner.run_id
        assert store.get_run(run_id)["status"] == "interrupted"
        done = store.trials([run_id])
        assert [t.precision for t in done] == ["fp32"]  # the finished trial was kept
        first_finish = done[0].finished_at
        resumed = Run(cfg, reg, store).execute(resume=run_id)
        assert resumed == run_id
        after = {t.precision: t for t in store.trials([run_id])}
        assert set(after) == {"fp32", "interrupting"}
        assert after["fp32"].finished_at == first_finish  # not re-run
        assert after["interrupting"].status == "ok"
        assert store.get_run(run_id)["status"] == "finished"


def test_reference_cached_on_disk(tmp_path):
    reg = build_registry(get_plugin_manager())
    cfg = parse_config(make_config(tmp_path), registry=reg)
    messages: list[str] = []
    with Store(cfg.store.path) as store:
        Run(cfg, reg, store, on_message=messages.append).execute()
        Run(cfg, reg, store, on_message=messages.append).execute()
    refs = [m for m in messages if m.startswith("reference ")]
    assert refs[0].startswith("reference sine_440[duration=1.0]: computed in")
    assert refs[1].startswith("reference sine_440[duration=1.0]: read from the cache (") and len(refs) == 2  # no worker repeats
    assert len(list((tmp_path / "cache" / "reference").glob("*.npy"))) == 1


def test_corrupt_fixture_fails_its_trials_only(tmp_path):
    """A fixture that goes bad after validation (validation itself refuses a corrupt file) fails its trials only."""
    import soundfile as sf

    bad = tmp_path / "corrupt.wav"
    sf.write(str(bad), np.zeros((4410, 2), np.float32), 44100)
    reg = build_registry(get_plugin_manager())
    cfg = parse_config(make_config(tmp_path, fixtures=[{"sine_440": {"duration": 1.0}}, str(bad)]), registry=reg)
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = {(t.precision, t.compute, t.fixture): t for t in store.trials([run_id])}
        run = store.get_run(run_id)
    assert run["status"] == "finished"
    good = trials[("fp32", "torch[device='cpu']", "sine_440[duration=1.0]")]
    assert good.status == "ok", good.reason
    broken = trials[("fp32", "torch[device='cpu']", "corrupt")]
    assert broken.status == "failed" and "cannot read" in broken.reason and "corrupt.wav" in broken.reason
