"""Portable op identity: module paths on both units, module-glob assignments, transfer, stored assignments,
``htx export`` of a stored trial, and the placement audit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import SHARED_CONVERSIONS, make_config
from htx.api import Assignment, OpInfo
from htx.cli import app
from htx.config import ModelConfig, parse_config
from htx.identity import stored_assignment, transfer
from htx.models import load_model
from htx.opmap import placement_runs
from htx.plugins import load_registry
from htx.run import Run
from htx.spectrogram import demucs_spec, spec_to_cac
from htx.store import Store
from htx_plugins.compute.coreml import CoreMLUnit
from htx_plugins.compute.coreml.convert import load_program
from htx_plugins.compute.coreml.graph import Node, Ref, VarInfo, read_program
from htx_plugins.compute.coreml.unit import count_casts
from htx_plugins.compute.torch_unit import TorchUnit
from htx_plugins.precision.static import ModulesFP32
from htx_plugins.surgery.full_hybrid import FullHybridInner

KNOWN = [
    "encoder.0.dconv.layers.0.0|conv|0",        # the first conv of the first frequency encoder's DConv
    "tencoder.1.conv|conv|0",                    # the second time encoder's strided conv
    "crosstransformer.layers.0.norm1|layer_norm|0",
    "crosstransformer.layers_t.1.linear2|linear|0",
    "decoder.0.conv_tr|conv_transpose|0",
]


@pytest.fixture(scope="module")
def demo_units():
    """The demo model's full-hybrid inner model prepared on the torch unit and on the Core ML unit (emulated)."""
    loaded = load_model(ModelConfig(kind="demo"))
    inner = FullHybridInner(loaded.model)
    mix = 0.1 * torch.randn(1, 2, loaded.segment_length, generator=torch.Generator().manual_seed(0))
    args = (spec_to_cac(demucs_spec(mix, loaded.model.nfft)), mix)
    tu = TorchUnit(TorchUnit.Params(device="cpu"))
    cu = CoreMLUnit(CoreMLUnit.Params(runtime="emulated", device="cpu"))
    return tu.ops(tu.prepare(inner, args)), cu.ops(cu.prepare(inner, args, cache_dir=SHARED_CONVERSIONS[0]))


def test_known_ops_have_the_same_module_path_on_both_units(demo_units):
    torch_ops, coreml_ops = demo_units
    for ops in demo_units:
        keys = {op.key for op in ops}
        assert set(KNOWN) <= keys, sorted(set(KNOWN) - keys)
        assert len(keys) == len(ops)  # the key is unique per op
    # TorchScript drops ModuleList names (encoder.0 and tencoder.0 both come out as "0"): the paths are whole here
    assert {op.module.split(".")[0] for op in coreml_ops if op.compute} >= {"encoder", "tencoder", "decoder", "tdecoder", "crosstransformer"}
    gn = "encoder.0.dconv.layers.0.1"
    assert [op.type for op in torch_ops if op.module == gn and op.compute] == ["group_norm"]
    assert {"reduce_mean", "sqrt", "real_div"} <= {op.type for op in coreml_ops if op.module == gn}


def test_a_module_glob_assignment_selects_the_same_modules_on_both_units(demo_units):
    policy = ModulesFP32(ModulesFP32.Params(keep_fp32=["encoder.*.dconv.layers.*.1", "crosstransformer.layers.0", "*:softmax"]))
    chosen = []
    for ops in demo_units:
        a = policy.select(ops)
        fp32 = [op for op in ops if op.compute and op.name not in a.fp16]
        chosen.append({op.module for op in fp32 if op.type != "softmax"})
        assert fp32 and all(op.module.startswith(("encoder.", "crosstransformer.layers.0")) or op.type == "softmax" for op in fp32)
    assert chosen[0] == chosen[1]


def test_an_assignment_transfers_through_portable_keys(demo_units):
    torch_ops, coreml_ops = demo_units
    keep = [op for op in torch_ops if op.compute and op.type in ("group_norm", "layer_norm", "conv")]
    moved = transfer(torch_ops, [op.key for op in keep], coreml_ops)
    fp32 = [op for op in coreml_ops if op.compute and op.name not in moved.assignment.fp16]
    # every conv stays a conv; each FP32 group norm covers the ~10 MIL ops Core ML makes of it
    assert {op.key for op in keep if op.type == "conv"} <= {op.key for op in fp32}
    assert {"reduce_mean", "sqrt", "real_div"} <= {op.type for op in fp32 if op.module == "encoder.0.dconv.layers.0.1"}
    assert moved.unmatched == 0 and not moved.unused
    # and back: the Core ML set applied to the torch unit gives the torch set
    back = transfer(coreml_ops, [op.key for op in fp32], torch_ops)
    assert {op.name for op in torch_ops if op.compute and op.name not in back.assignment.fp16} == {op.name for op in keep}


def test_partitions_of_a_hand_built_program():
    """FP16 ops around FP32 islands of 1, 2 and 3 ops: 7 segments in execution order."""
    pattern = "hhFhhFFhFFFh"  # h: FP16, F: FP32
    ops = [OpInfo(f"op{i}", "mul") for i in range(len(pattern))] + [OpInfo("r", "reshape", compute=False)]
    a = Assignment(frozenset(f"op{i}" for i, c in enumerate(pattern) if c == "h"))
    assert placement_runs(ops, a) == {"partitions": 7, "ne_ops": 6, "off_ne_ops": 6}
    assert placement_runs(ops, Assignment.all_fp16(ops))["partitions"] == 1
    # casts: a chain op0 -> op1 -> ... ; each precision change along it needs one cast, plus FP32 in -> first FP16 op
    v = [VarInfo(f"v{i}", "fp32", (4,)) for i in range(len(pattern) + 1)]
    nodes = [Node(f"op{i}", "mul", {"x": Ref(v[i]), "y": Ref(v[i])}, [v[i + 1]]) for i in range(len(pattern))]
    graph = type("G", (), {"inputs": [v[0]], "nodes": nodes})()
    changes = sum(pattern[i] != pattern[i - 1] for i in range(1, len(pattern)))
    assert count_casts(graph, a) == changes + 1  # + the program input into the first FP16 op


def test_a_stored_trial_exports_with_its_fp16_set(tmp_path):
    reg = load_registry()
    keep = ["encoder.0", "crosstransformer.*:softmax"]
    data = make_config(tmp_path, precision=[{"modules": {"keep_fp32": keep}}],
                       compute=[{"coreml": {"runtime": "emulated", "device": "cpu"}}, {"torch": {"device": "cpu"}}])
    cfg = parse_config(data, registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = {t.compute.split("[")[0]: t for t in store.trials([run_id])}
    cm = trials["coreml"]
    assert cm.status == "ok", cm.reason
    stored = cm.info["assignment"]
    assert stored["fp32_keys"] and all(k.startswith("encoder.0") or "|softmax|" in k for k in stored["fp32_keys"])
    for key in ("partitions", "ne_ops", "off_ne_ops", "casts"):
        assert key in cm.metrics, key
    assert cm.info["placement"] == "emulated" and cm.metrics["partitions"] >= 2
    assert "partitions" in trials["torch"].metrics and "casts" in trials["torch"].metrics

    out = tmp_path / "trial.mlpackage"
    res = CliRunner().invoke(app, ["export", f"{run_id}/{cm.trial_id}", "--out", str(out), "--db", cfg.store.path])
    assert res.exit_code == 0, res.output
    graph = read_program(load_program(out))
    typed = {n.name: any(o.dtype == "fp16" for o in n.outputs) for n in graph.nodes}
    fp32_names = set(stored["fp32_names"])
    compute = [n for n in graph.nodes if n.name in fp32_names or n.name in typed and n.type not in ("cast",)]
    assert all(not typed[name] for name in fp32_names if name in typed)  # the stored FP32 set is FP32
    assert sum(typed.values()) > len(compute) // 2  # and the rest went FP16

    # a torch trial has no export of its own; through the portable keys it exports to Core ML (--compute, or
    # the unit --out's suffix names)
    tt = trials["torch"]
    res = CliRunner().invoke(app, ["export", f"{run_id}/{tt.trial_id}", "--out", str(tmp_path / "t.bin"), "--db", cfg.store.path])
    assert res.exit_code == 1 and "cannot export" in res.output and "--compute" in res.output
    res = CliRunner().invoke(app, ["export", f"{run_id}/{tt.trial_id}", "--out", str(tmp_path / "t.mlpackage"), "--db", cfg.store.path])
    assert res.exit_code == 0 and "exporting through the coreml unit" in res.output, res.output
    assert "portable keys" in res.output and "0 unmatched" in res.output, res.output
    assert read_program(load_program(tmp_path / "t.mlpackage")).nodes


def test_stored_assignment_lists_fp32_keys_and_names():
    ops = [OpInfo("conv_0", "conv", module="encoder.0"), OpInfo("add_0", "add", module="")]
    s = stored_assignment(Assignment(frozenset({"add_0"})), ops)
    assert s == {"fp32_keys": ["encoder.0|conv|0"], "fp32_names": ["conv_0"], "n_compute": 2}


def test_device_plan_reads_the_compute_plan(monkeypatch, tmp_path):
    """The macOS path (mocked: no Mac here): ops per preferred device and device partitions."""
    from htx_plugins.compute.coreml import native

    class NE:  # the class names MLComputePlan's devices have
        pass

    class CPU:
        pass

    NE.__name__, CPU.__name__ = "MLNeuralEngineComputeDevice", "MLCPUComputeDevice"
    ops = [type("Op", (), {"operator_name": t})() for t in ("conv", "const", "softmax", "add")]
    devices = {id(ops[0]): NE(), id(ops[2]): CPU(), id(ops[3]): NE()}
    plan = type("Plan", (), {
        "model_structure": type("S", (), {"program": type("P", (), {"functions": {"main": type("F", (), {"block": type("B", (), {"operations": ops})()})()}})()})(),
        "get_compute_device_usage_for_mlprogram_operation": staticmethod(lambda op: type("U", (), {"preferred_compute_device": devices[id(op)]})()),
    })()
    ct = type("CT", (), {})()
    ct.models = type("M", (), {"compute_plan": type("CP", (), {"MLComputePlan": type("L", (), {"load_from_path": staticmethod(lambda *a, **k: plan)})})()})()
    ct.ComputeUnit = type("CU", (), {"CPU_AND_NE": 3})
    monkeypatch.setattr(native, "runtime_available", lambda: (True, ""))
    monkeypatch.setattr(native, "coremltools", lambda: ct)
    monkeypatch.setattr(native, "load_mlmodel", lambda path, units: type("MM", (), {"get_compiled_model_path": lambda self: "x"})())
    assert native.device_plan(Path(tmp_path), "CPU_AND_NE") == {"ne_ops": 2, "gpu_ops": 0, "cpu_ops": 1, "partitions": 3}
