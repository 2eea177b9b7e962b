"""The ``coreml`` compute unit: conversion cache, typed-execution emulator fidelity, native path, CLI.

One tiny HTDemucs is converted once per module (shared cache directory); the runner tests use the same
model and cache, so they reuse that conversion.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import TINY_MODEL, make_config
from htx.api import Assignment
from htx.cli import app
from htx.config import ModelConfig, parse_config
from htx.models import load_model
from htx.pipeline import spec_to_cac
from htx.plugins import load_registry
from htx.run import Run
from htx.store import Store
from htx_plugins.compute.coreml import CoreMLUnit, convert, native
from htx_plugins.compute.coreml.convert import load_program
from htx_plugins.compute.coreml.emulator import Emulator
from htx_plugins.compute.coreml.graph import fp16_const, read_program
from htx_plugins.compute.coreml.kernels import UnknownOpError
from htx_plugins.stft.torch_stft import demucs_spec
from htx_plugins.surgery.full_hybrid import FullHybridInner

CURATED = ("pow", "sqrt", "real_div", "l2_norm", "reduce_mean", "reduce_sum", "softmax", "matmul")


def _inputs(model: torch.nn.Module, seed: int, scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mix = scale * torch.randn(1, model.audio_channels, int(model.segment * model.samplerate), generator=gen)
    return spec_to_cac(demucs_spec(mix, model.nfft)), mix


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml-cache")


@pytest.fixture(scope="module")
def tiny(cache_dir: Path):
    """The tiny HTDemucs of the test configs, converted once (emulated, CPU)."""
    loaded = load_model(ModelConfig.model_validate(TINY_MODEL))
    inner = FullHybridInner(loaded.model).eval()
    unit = CoreMLUnit(CoreMLUnit.Params(runtime="emulated", device="cpu"))
    example = _inputs(loaded.model, 1234)
    prepared = unit.prepare(inner, example, cache_dir=cache_dir)
    return loaded.model, inner, unit, prepared


def _registry_cfg(tmp_path: Path, cache_dir: Path, **overrides) -> dict:
    cfg = make_config(tmp_path, **overrides)
    cfg["store"]["cache_dir"] = str(cache_dir)
    return cfg


# --------------------------------------------------------------------------------------------------
# conversion and op listing


def test_prepare_converts_once_then_hits_the_cache(tiny, cache_dir, monkeypatch):
    model, inner, unit, prepared = tiny
    entry = prepared.conversion.path.parent
    assert entry.parent == cache_dir / "coreml" and (entry / "model.mlpackage").is_dir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["target"] == "iOS18" and meta["signature"]["input_names"] == ["spec_cac", "mix"]

    def no_trace(*args, **kwargs):
        raise AssertionError("a cache hit must not trace or convert again")

    monkeypatch.setattr(convert, "trace", no_trace)
    again = CoreMLUnit(unit.params).prepare(inner, _inputs(model, 7), cache_dir=cache_dir)
    assert again.conversion.hit and again.conversion.key == prepared.conversion.key
    assert [op.name for op in unit.ops(again)] == [op.name for op in unit.ops(prepared)]
    # Another input shape is another program.
    key_long = convert.cache_key(inner, (torch.zeros(1, 4, 2048, 88), torch.zeros(1, 2, 88200)), "iOS18")
    assert key_long != prepared.conversion.key
    assert convert.cache_key(inner, _inputs(model, 3), "iOS17") != prepared.conversion.key


def test_ops_are_program_order_without_consts(tiny):
    _, _, unit, prepared = tiny
    ops = unit.ops(prepared)
    assert [op.name for op in ops] == [n.name for n in prepared.graph.nodes]
    assert len({op.name for op in ops}) == len(ops)
    assert "const" not in {op.type for op in ops} and prepared.graph.consts > 0
    types = {op.type for op in ops}
    assert {"conv", "conv_transpose", "reduce_mean", "layer_norm", "linear", "scaled_dot_product_attention", "gelu"} <= types
    assert all(not op.compute for op in ops if op.type in ("reshape", "transpose", "slice_by_index", "split"))
    assert all(op.compute for op in ops if op.type in ("conv", "add", "softmax", "reduce_mean"))
    assert unit.runtime == "coreml:emulated" and unit.emulated


# --------------------------------------------------------------------------------------------------
# fidelity


def test_fp32_program_emulated_matches_torch_inner(tiny):
    """(a) the FP32 program, emulated, equals the torch inner model (rtol 1e-5, atol 1e-6)."""
    model, inner, unit, prepared = tiny
    spec, mix = _inputs(model, 99, scale=0.3)
    forward = unit.compile(prepared, Assignment.all_fp32())
    with torch.no_grad():
        ref = inner(spec, mix)
    out = forward(spec, mix)
    for name, r, o in zip(("spec_out", "wave_out"), ref, out, strict=True):
        assert o.dtype == torch.float32 and o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def converted(tiny, cache_dir, tmp_path_factory):
    """``htx convert`` of the tiny model with curated-fp32 (a real typed .mlpackage)."""
    tmp = tmp_path_factory.mktemp("convert")
    cfg = _registry_cfg(tmp, cache_dir, precision=["fp32", "curated-fp32"], compute=[{"coreml": {"runtime": "emulated"}}])
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp / "tiny_curated.mlpackage"
    res = CliRunner().invoke(app, ["convert", str(path), "--precision", "curated-fp32", "--out", str(out)])
    return res, out


def test_htx_convert_writes_a_typed_mlpackage(converted, tiny):
    res, out = converted
    assert res.exit_code == 0, res.output
    assert out.is_dir() and (out / "Manifest.json").exists()
    assert f"wrote {out}" in res.output and "MiB" in res.output
    share = float(res.output.split("compute ops (")[1].split("%")[0])
    _, _, unit, prepared = tiny
    ops = unit.ops(prepared)
    expected = Assignment.keep_fp32(ops, [op.name for op in ops if op.type in CURATED]).fp16_fraction(ops)
    assert abs(share / 100 - expected) < 0.02  # the package itself holds the policy's share of FP16 ops
    assert "not seen by the op_selector" not in res.output


def test_runtime_assignment_is_bit_identical_to_the_typed_program(converted, tiny):
    """(b) FP32 program + assignment at run time == the program ct.convert(op_selector=...) produced."""
    res, out = converted
    assert res.exit_code == 0, res.output
    model, _, unit, prepared = tiny
    ops = unit.ops(prepared)
    assignment = Assignment.keep_fp32(ops, [op.name for op in ops if op.type in CURATED])
    typed = read_program(load_program(out))
    casts = [n for n in typed.nodes if n.type == "cast"]
    assert casts and any(o.dtype == "fp16" for n in typed.nodes if n.type == "conv" for o in n.outputs)
    emu_typed = Emulator(typed, "cpu")
    inputs = list(_inputs(model, 5, scale=0.5))
    got_typed = emu_typed.run(emu_typed.plan(frozenset()), inputs)
    got_runtime = prepared.emulator.run(prepared.emulator.plan(assignment.fp16), inputs)
    for t, r in zip(got_typed, got_runtime, strict=True):
        assert torch.equal(t, r), f"max diff {(t - r).abs().max()}"
    fp32 = prepared.emulator.run(prepared.emulator.plan(frozenset()), inputs)
    assert not all(torch.equal(a, b) for a, b in zip(fp32, got_runtime, strict=True))  # FP16 did change something


def test_all_fp16_finite_on_fixtures_with_snr_reported(tiny, cache_dir, tmp_path, record_property, capsys):
    """(c) all-FP16 output is finite on the built-in fixtures; its SNR vs the FP32 reference is reported."""
    cfg = parse_config(_registry_cfg(
        tmp_path, cache_dir, fixtures=[{f: {"duration": 0.5}} for f in ("silence", "sine_440", "white_noise")],
        precision=["all-fp16"],
        compute=[{"coreml": {"runtime": "emulated", "device": "cpu"}}],
    ), registry=load_registry())
    with Store(tmp_path / "htx.sqlite") as store:
        run_id = Run(cfg, load_registry(), store).execute()
        recs = store.trials([run_id])
    assert len(recs) == 3 and all(r.status == "ok" for r in recs), [(r.precision, r.fixture, r.reason) for r in recs]
    assert all(r.runtime == "coreml:emulated" and r.info["emulated"] for r in recs)
    snrs = {}
    for r in recs:
        assert r.metrics["nan_count"] == 0 and r.metrics["inf_count"] == 0
        if r.precision == "all-fp16":
            assert r.metrics["fp16_op_fraction"] == 1.0
            snrs[r.fixture.split("[")[0]] = r.metrics["snr_db"]
    with capsys.disabled():
        print("\nall-FP16 (coreml emulated) SNR vs FP32 reference: " + ", ".join(
            f"{k} {'n/a (silent reference)' if v is None else f'{v:.1f} dB'}" for k, v in sorted(snrs.items())))
    record_property("all_fp16_snr_db", json.dumps(snrs))
    assert snrs["silence"] is None  # a silent reference has no SNR
    assert snrs["sine_440"] > 40 and snrs["white_noise"] > 40

    # htx ops re-runs one recording pass of a stored trial.
    trial = next(r for r in recs if r.precision == "all-fp16" and r.fixture.startswith("white_noise"))
    res = CliRunner().invoke(app, ["ops", f"{run_id}/{trial.trial_id}", "--db", str(tmp_path / "htx.sqlite"), "--top", "5"])
    assert res.exit_code == 0, res.output
    assert "recorded on coreml:emulated" in res.output and "0 with NaN/Inf output" in res.output
    n_ops = len(tiny[2].ops(tiny[3]))
    assert f"{n_ops} ops recorded" in res.output


# --------------------------------------------------------------------------------------------------
# the emulator on small programs


def _mil_program():
    ct = convert.coremltools()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 65536))], opset_version=ct.target.iOS18)
    def prog(x):
        mean = mb.reduce_mean(x=x, axes=[1], keep_dims=True, name="mean")
        scaled = mb.mul(x=x, y=np.float32(300.0), name="scale")
        sq = mb.square(x=scaled, name="sq")
        tiny = mb.add(x=scaled, y=np.float32(1e-9), name="add_tiny")
        return mean, sq, tiny

    return read_program(prog)


def test_fp16_overflow_and_fp16_accumulation():
    graph = _mil_program()
    ones = [torch.ones(1, 65536)]
    emu = Emulator(graph, "cpu", accumulate="fp32")
    mean, sq, _ = emu.run(emu.plan({"mean", "scale", "sq"}), ones)
    assert float(mean) == 1.0  # FP32 accumulation inside an FP16 reduce_mean
    assert torch.isinf(sq).all()  # 300**2 = 90000 > 65504: inf, as on device
    mean32, sq32, _ = emu.run(emu.plan(), ones)
    assert float(mean32) == 1.0 and float(sq32.max()) == 90000.0
    emu16 = Emulator(graph, "cpu", accumulate="fp16")
    mean16, _, _ = emu16.run(emu16.plan({"mean"}), ones)
    assert torch.isinf(mean16).all()  # the FP16 running sum overflows past 65504 before the division
    mean16_fp32op, _, _ = emu16.run(emu16.plan(), ones)
    assert float(mean16_fp32op) == 1.0  # accumulate only affects ops that run in FP16


def test_record_reports_overflow_per_op():
    graph = _mil_program()
    emu = Emulator(graph, "cpu")
    rec: dict = {}
    emu.run(emu.plan({"sq"}), [torch.ones(1, 65536)], stats=rec)
    assert set(rec) == {"mean", "scale", "sq", "add_tiny"}
    assert rec["sq"].inf == 65536 and rec["sq"].nan == 0 and rec["sq"].inputs_finite and not rec["sq"].finite
    assert rec["sq"].max_abs_input == 300.0 and rec["scale"].max_abs == 300.0 and rec["scale"].finite
    assert rec["mean"].reduction_size == 65536 and rec["sq"].reduction_size == 0


def test_fp16_constants_keep_tiny_values_nonzero():
    # coremltools' FP16 pass turns tiny non-zero constants into the smallest subnormal instead of 0.
    small = fp16_const(np.array([1e-9, -1e-9, 0.0, 1.0], dtype=np.float32))
    tiny16 = np.nextafter(np.float16(0), np.float16(1))
    assert small.tolist() == [tiny16, -tiny16, 0.0, 1.0]
    assert fp16_const(np.full(400, 1e-9, dtype=np.float32)).max() == 0.0  # large constants are left alone
    graph = _mil_program()
    emu = Emulator(graph, "cpu")
    _, _, out = emu.run(emu.plan({"add_tiny"}), [torch.zeros(1, 65536)])
    assert float(out.max()) == float(tiny16)


def test_unknown_op_type_is_a_clear_error():
    graph = _mil_program()
    graph.nodes[1].type = "frobnicate"
    with pytest.raises(UnknownOpError, match=r"no kernel for MIL op type 'frobnicate' \(op 'scale'\)"):
        Emulator(graph, "cpu").plan()


class Zoo(torch.nn.Module):
    """Ops that other surgeries and targets produce: matmul, softmax, concat, pads, norms, reductions ..."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(4, 6, 5, padding=2)
        self.convt = torch.nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(2, 3, (3, 3), padding=(1, 0), stride=(1, 2))
        self.gn = torch.nn.GroupNorm(2, 6)
        self.bn = torch.nn.BatchNorm1d(6).eval()
        self.ln = torch.nn.LayerNorm(16)
        self.lin = torch.nn.Linear(16, 16)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = torch.nn.functional
        y = self.bn(self.gn(self.conv(x)))
        y = F.relu(y) + torch.tanh(y) * torch.sigmoid(y) - F.silu(y)
        y = self.convt(y)[..., :16]
        q = self.lin(self.ln(y))
        o = torch.softmax(q @ q.transpose(-1, -2) / 4.0, dim=-1) @ y
        o = torch.cat([o, y.flip(-1)], dim=1)
        o = F.pad(F.pad(o, (2, 3), mode="reflect") + 0.5, (1, 0), mode="replicate")
        o = o[..., :16] * torch.rsqrt(o[..., :16].pow(2).mean(-1, keepdim=True) + 1e-5)
        o = torch.where(o > 0, o, 0.1 * o)
        o = o + torch.cumsum(o, dim=-1) * 0.01 + o.amax(dim=1, keepdim=True) - o.abs().sum(dim=-1, keepdim=True) * 0.01
        o = o + torch.exp(-o.abs()) + torch.log(o.abs() + 1) + torch.erf(o) + torch.clamp(o, -0.5, 0.5)
        o = o + 1.0 / (o.abs() + 1.0) + torch.sqrt(o.abs()) + torch.maximum(o, -o) * torch.minimum(o, 2 * o)
        a, b, c = torch.split(o, [2, 3, 3], dim=1)
        o = torch.stack([a.mean(1), b.mean(1), c.var(1)], dim=1).repeat(1, 2, 1)
        w = torch.einsum("bchw->bhcw", self.conv2(z)).reshape(2, -1)
        return o, w.unsqueeze(1)


def _zoo_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 16, generator=gen), torch.randn(2, 2, 8, 8, generator=gen)


@pytest.mark.parametrize("target", ["iOS18", "iOS16"])
def test_op_zoo_fp32_fidelity_and_typed_bit_identity(target, cache_dir):
    model = Zoo().eval()
    x, z = _zoo_inputs(0)
    unit = CoreMLUnit(CoreMLUnit.Params(runtime="emulated", device="cpu", target=target))
    prepared = unit.prepare(model, (x, z), cache_dir=cache_dir)
    ops = unit.ops(prepared)
    assert {"matmul", "softmax", "concat", "pad", "reverse", "select", "cumsum", "stack", "tile", "batch_norm"} <= {op.type for op in ops}
    with torch.no_grad():
        ref = model(x, z)
    for r, o in zip(ref, unit.compile(prepared, Assignment.all_fp32())(x, z), strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    traced, sig = convert.trace(model, (x, z))
    rng = random.Random(0)
    mixed = Assignment(frozenset(op.name for op in ops if op.compute and rng.random() < 0.5))
    for assignment in (Assignment.all_fp16(ops), mixed):
        mlmodel, seen = convert.typed_convert(traced, sig, target, assignment.fp16)
        assert assignment.fp16 <= seen
        typed = Emulator(read_program(mlmodel._mil_program), "cpu")
        a = typed.run(typed.plan(), [x, z])
        b = prepared.emulator.run(prepared.emulator.plan(assignment.fp16), [x, z])
        for t, r in zip(a, b, strict=True):
            assert torch.equal(t, r), f"{target}: max diff {(t - r).abs().max()}"


# --------------------------------------------------------------------------------------------------
# runtimes


def test_runtime_native_unavailable_gives_unavailable_rows(tmp_path, monkeypatch):
    if sys.platform == "darwin":  # keep the test meaningful on a Mac too: no runtime there either
        monkeypatch.setattr(native, "runtime_available", lambda: (False, "mocked: no Core ML runtime"))
    data = make_config(tmp_path, precision=["fp32", "all-fp16"], compute=[{"coreml": {"runtime": "native", "units": "ALL"}}])
    data["store"]["cache_dir"] = str(tmp_path / "own-cache")  # not the session's shared conversions
    cfg = parse_config(data, registry=load_registry())
    with Store(tmp_path / "htx.sqlite") as store:
        run_id = Run(cfg, load_registry(), store).execute()
        recs = store.trials([run_id])
    assert len(recs) == 2 and all(r.status == "unavailable" for r in recs)
    assert all("runtime native" in r.reason and ("macOS" in r.reason or "mocked" in r.reason) for r in recs)
    assert not (tmp_path / "own-cache" / "coreml").exists()  # nothing was converted, nothing emulated
    unit = CoreMLUnit(CoreMLUnit.Params(runtime="auto"))
    if sys.platform != "darwin":
        assert unit.runtime == "coreml:emulated" and unit.available() == (True, "")


class FakeRuntime:
    """Stands in for ``coremltools.models.MLModel`` at the runtime boundary: runs the typed package it was given."""

    loads: list[tuple[Path, str]] = []

    def __init__(self, path: Path, units: str) -> None:
        FakeRuntime.loads.append((Path(path), units))
        self.graph = read_program(load_program(path))
        self.emulator = Emulator(self.graph, "cpu")
        self.plan = self.emulator.plan()
        self.calls: list[dict] = []

    def predict(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: (v.shape, v.dtype) for k, v in feed.items()})
        ins = [torch.from_numpy(feed[v.name]) for v in self.graph.inputs]
        outs = self.emulator.run(self.plan, ins)
        return {name: o.numpy() for name, o in zip(self.graph.outputs, outs, strict=True)}


def test_native_path_with_mocked_runtime(cache_dir, monkeypatch):
    model = Zoo().eval()
    example = _zoo_inputs(0)
    monkeypatch.setattr(native, "runtime_available", lambda: (True, ""))
    monkeypatch.setattr(native, "load_mlmodel", FakeRuntime)
    FakeRuntime.loads.clear()
    unit = CoreMLUnit(CoreMLUnit.Params(runtime="native", units="CPU_AND_GPU"))
    assert unit.available() == (True, "") and not unit.emulated and unit.runtime == "coreml:native[CPU_AND_GPU]"
    prepared = unit.prepare(model, example, cache_dir=cache_dir)
    assert prepared.emulator is None
    ops = unit.ops(prepared)
    assignment = Assignment.keep_fp32(ops, [op.name for op in ops if op.type in CURATED])
    forward = unit.compile(prepared, assignment)
    (path, units), = FakeRuntime.loads
    assert units == "CPU_AND_GPU" and path.suffix == ".mlpackage" and path.parent == prepared.conversion.path.parent
    typed = read_program(load_program(path))
    assert all(o.dtype == "fp16" for n in typed.nodes if n.type in ("conv", "linear") for o in n.outputs)
    assert all(o.dtype == "fp32" for n in typed.nodes if n.type in ("softmax", "reduce_mean") for o in n.outputs)
    x, z = _zoo_inputs(3)
    got = forward(x, z)
    assert forward.model.calls[-1] == {"x": ((2, 4, 16), np.float32), "z": ((2, 2, 8, 8), np.float32)}
    emu = CoreMLUnit(CoreMLUnit.Params(runtime="emulated", device="cpu"))
    expected = emu.compile(emu.prepare(model, example, cache_dir=cache_dir), assignment)(x, z)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))  # the package holds the assignment
    unit.compile(prepared, assignment)  # a second compile reuses the typed package
    assert len({p for p, _ in FakeRuntime.loads}) == 1


def test_model_hash_ignores_kwargs_order():
    # A run's stored config lists HTDemucs kwargs in another order; its reference cache must still hit.
    from htx.models import model_hash, random_htdemucs

    a = random_htdemucs(seed=0, channels=8, depth=2, t_layers=1, segment=1)
    b = random_htdemucs(seed=0, segment=1, t_layers=1, depth=2, channels=8)
    assert model_hash(a) == model_hash(b)


def test_half_native_elementwise_ops_equal_fp32_rounded_once():
    # The emulator runs these ops directly on FP16 tensors; that must equal FP32 arithmetic rounded once.
    from htx_plugins.compute.coreml.emulator import HALF_NATIVE
    from htx_plugins.compute.coreml.kernels import _BINARY, _UNARY

    gen = torch.Generator().manual_seed(0)
    mags = torch.tensor([6e-8, 1e-5, 1e-2, 1.0, 3.0, 255.0, 4e4, 6.5e4])
    x = (torch.randn(4096, generator=gen) * mags[torch.randint(0, 8, (4096,), generator=gen)]).half()
    y = (torch.randn(4096, generator=gen) * mags[torch.randint(0, 8, (4096,), generator=gen)]).half()
    x[:4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])
    for op in sorted(HALF_NATIVE):
        fn = _BINARY.get(op) or _UNARY[op]
        args16 = (x, y) if op in _BINARY else (x.abs() if op == "sqrt" else x,)
        got = fn(*args16)
        want = fn(*(a.float() for a in args16)).half()
        assert got.dtype == torch.float16, op
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=op)
