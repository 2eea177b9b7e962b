"""The ``coreai`` unit on a small HTDemucs: a typed torch.export program, converted by coreai-torch to a real
``.aimodel`` and read back through the Core AI runtime's asset API (which works on Linux; running needs macOS 27)."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import hide_module, make_config, tiny_inner
from htx.api import Assignment, key_mismatches, load_registry, parse_config
from htx.cli import app
from htx.run import Run
from htx.store import Store

pytest.importorskip("coreai_torch", reason="Core AI needs Python >= 3.11 and pip install 'htx[coreai]'")

from htx_plugins.compute.coreai import CoreAIUnit  # noqa: E402
from htx_plugins.compute.coreai.program import summary  # noqa: E402
from htx_plugins.compute.torch_unit import TorchUnit  # noqa: E402


@pytest.fixture(scope="module")
def prepared():
    inner, inputs = tiny_inner()
    unit = CoreAIUnit()
    return unit, unit.prepare(inner, inputs), inner, inputs


def _snr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float(((ref - out) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref**2).sum()) / noise)


def test_keys_match_the_torch_unit(prepared):
    unit, prep, inner, inputs = prepared
    tu = TorchUnit()
    check = key_mismatches(tu.ops(tu.prepare(inner, inputs)), unit.ops(prep), "coreai")
    assert check.ok and not check.unmapped and not check.undecided_reference, "\n".join(check.lines())


def test_the_typed_program_runs_fp16_where_assigned(prepared):
    unit, prep, inner, inputs = prepared
    ref = [t.detach() for t in inner(*inputs)]
    out32 = unit.compile(prep, Assignment.all_fp32())(*inputs)
    assert all(_snr(r, a) > 200 for r, a in zip(ref, out32))
    a16 = Assignment.all_fp16(unit.ops(prep))
    out16 = unit.compile(prep, a16)(*inputs)
    assert all(40 < _snr(r, a) < 100 for r, a in zip(ref, out16))  # FP16 really ran
    assert unit.placement(prep, a16).casts > 0 and unit.placement(prep, Assignment.all_fp32()).casts == 0


def test_export_round_trip_and_op_distribution(prepared, tmp_path):
    unit, prep, *_ = prepared
    convs = [op.name for op in unit.ops(prep) if op.type == "conv"]
    fp32 = unit.export(prep, Assignment.all_fp32(), tmp_path / "fp32.aimodel")
    s32 = summary(fp32)
    assert "Float32" in s32["compute_types"] and "Float16" not in s32["compute_types"]
    half = Assignment(frozenset(convs))  # only the convolutions in FP16
    path = unit.export(prep, half, tmp_path / "convs.aimodel")
    s16 = summary(path)
    assert "Float16" in s16["compute_types"] and "Float32" in s16["compute_types"]
    assert s16["operation_distribution"]["conv2d"] == s32["operation_distribution"]["conv2d"] == len(convs)
    # each converted conv reads FP16 values: the program gained casts, one in and one out per conv at least
    gained = s16["operation_distribution"].get("cast", 0) - s32["operation_distribution"].get("cast", 0)
    assert gained >= len(convs), (gained, len(convs))
    assert prep.export_report["casts"] >= 2 * len(convs)


def test_htx_export_of_a_torch_trial_as_aimodel(tmp_path):
    reg = load_registry()
    cfg = parse_config(make_config(tmp_path, precision=["curated-fp32"]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        (t,) = store.trials([run.run_id])
    out = tmp_path / "answer.aimodel"
    res = CliRunner().invoke(app, ["export", f"{run.run_id}/{t.trial_id}", "--out", str(out), "--db", cfg.store.path])
    assert res.exit_code == 0, res.output
    assert "exporting through the coreai unit" in res.output and "portable keys" in res.output
    assert "Float16" in summary(out)["compute_types"]


def test_unavailable_without_the_extra(monkeypatch):
    hide_module(monkeypatch, "coreai_torch")
    ok, why = CoreAIUnit().available()
    assert not ok and why.startswith("Core AI needs Python >= 3.11 and pip install 'htx[coreai]'")


class _FakeDesc:
    name = "main"

    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self.input_names, self.output_names = inputs, outputs


class _FakeFunction:
    """Stands in for a loaded Core AI function: runs the same typed program in torch (the runtime mocked)."""

    def __init__(self, module, n_outputs: int) -> None:
        self.module = module
        self.desc = _FakeDesc(["spec_cac", "mix"], [f"out_{i}" for i in range(n_outputs)])
        self.feeds: list[dict] = []


def test_the_native_path_with_the_runtime_mocked(prepared, tmp_path, monkeypatch):
    """On macOS 27 the unit converts each assignment to an .aimodel once, loads it on the chosen units and feeds
    it named float32 arrays; outputs come back in the function's order. The runtime is mocked here (this is Linux):
    the fake function runs the same typed program, so native outputs equal the emulated ones exactly."""
    from htx_plugins.compute.coreai import native
    from htx_plugins.compute.coreai.program import typed_program

    _, prep, inner, inputs = prepared
    unit_e = CoreAIUnit(CoreAIUnit.Params(runtime="emulated"))  # auto would go native under the mock
    loaded: list[tuple[str, str]] = []

    def load_function(path, units):
        assert path.is_dir() and (path / "main.mlirb").exists()  # a real .aimodel was written
        loaded.append((path.name, units))
        asg = fake_assignments[path.name]
        ep, _ = typed_program(prep.exported, asg)
        return _FakeFunction(ep.module(), 2)

    def call(function, feed):
        assert list(feed) == function.desc.input_names and all(a.dtype.name == "float32" for a in feed.values())
        function.feeds.append(feed)
        with torch.no_grad():
            outs = function.module(*(torch.from_numpy(a) for a in feed.values()))
        return {name: t.numpy() for name, t in zip(function.desc.output_names, outs)}

    monkeypatch.setattr(native, "runtime_available", lambda: (True, ""))
    monkeypatch.setattr(native, "load_function", load_function)
    monkeypatch.setattr(native, "call", call)
    unit = CoreAIUnit(CoreAIUnit.Params(runtime="auto", units="cpu_only"))
    assert unit.available() == (True, "") and not unit.emulated and unit.runtime == "coreai:native[cpu_only]"
    prep.cache_dir = tmp_path
    a16 = Assignment.all_fp16(unit.ops(prep))
    fake_assignments = {f"typed-{native.assignment_tag(frozenset(a.fp16))}.aimodel": a for a in (a16, Assignment.all_fp32())}
    fwd = unit.compile(prep, a16)
    out = fwd(*inputs)
    emulated = unit_e.compile(prep, a16)(*inputs)
    assert len(out) == len(emulated) and all(torch.equal(a, b) for a, b in zip(out, emulated))
    unit.compile(prep, a16)  # the .aimodel is converted once per assignment, then loaded from the cache
    assert loaded == [(fwd.path.name, "cpu_only")] * 2 and len(list((tmp_path / "coreai").iterdir())) == 1
    assert prep.key and fwd.path.parent == tmp_path / "coreai" / prep.key  # a folder per model: no collisions
    assert unit.placement(prep, a16).casts == unit_e.placement(prep, a16).casts  # from the typed program


def test_native_where_the_runtime_is_missing_is_unavailable_with_the_reason():
    from htx_plugins.compute.coreai import native

    ok, why = native.runtime_available()
    assert not ok and "macOS 27" in why  # this is Linux
    unit = CoreAIUnit(CoreAIUnit.Params(runtime="native"))
    ok, why = unit.available()
    assert not ok and why.startswith("runtime native: the Core AI runtime needs macOS 27") and "runtime: auto or emulated" in why
    assert CoreAIUnit().emulated and CoreAIUnit().runtime == "coreai:emulated"  # auto emulates here
