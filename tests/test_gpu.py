"""CUDA paths: the torch unit on a GPU, searches on it, the Core ML emulator on CUDA, and `htx bench gpu`.

Marked ``gpu``: skipped with a reason where CUDA is absent (CI has no GPU). Run them with
``python -m pytest -m gpu`` on a GPU machine (the ``device`` tool) before a change to a compute unit, the
builder, ``measure`` or a search policy lands. Small models only; no timings are asserted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_config, tiny_inner
from htx.api import Assignment
from htx.config import parse_config
from htx.models import random_htdemucs
from htx.pipeline import spec_to_cac
from htx.plugins import load_registry
from htx.run import Run
from htx.store import Store
from htx_plugins.compute.torch_unit import TorchUnit
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.surgery.full_hybrid import FullHybrid

pytestmark = pytest.mark.gpu

CUDA_TORCH = {"torch": {"device": "cuda"}}


@pytest.fixture(scope="module")
def setup():
    return tiny_inner(batch=2)


def _snr(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double().cpu(), out.double().cpu()
    return 10 * math.log10(float((ref**2).sum()) / max(float(((ref - out) ** 2).sum()), 1e-300))


def test_torch_unit_on_cuda_graphs_casts_and_fp32_exactness(setup):
    inner, inputs = setup
    cpu_ref = [t.detach() for t in inner(*inputs)]
    graphs = TorchUnit(TorchUnit.Params(device="cuda"))
    eager = TorchUnit(TorchUnit.Params(device="cuda", cuda_graphs=False))
    pg, pe = graphs.prepare(inner, inputs), eager.prepare(inner, inputs)
    ops = graphs.ops(pg)
    assert [o.key for o in ops] == [o.key for o in eager.ops(pe)]  # one op listing on either path
    dev_inputs = tuple(t.cuda() for t in inputs)
    fp32 = graphs.compile(pg, Assignment.all_fp32())
    out32 = fp32(*dev_inputs)
    out32_again = fp32(*dev_inputs)  # a replay of the captured graph
    assert not getattr(fp32, "failed", None), fp32.failed
    for a, b, ref in zip(out32, out32_again, cpu_ref):
        assert a.is_cuda and a.dtype == torch.float32 and torch.equal(a, b)
        assert _snr(ref, a) > 100  # true FP32 on the GPU (TF32 off by default) against the CPU
    asg = Assignment.all_fp16(ops)
    g16, e16 = graphs.compile(pg, asg)(*dev_inputs), eager.compile(pe, asg)(*dev_inputs)
    for a, b, ref in zip(g16, e16, cpu_ref):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        assert torch.equal(a, b)  # the graph replays exactly the eager kernels
        assert 20 < _snr(ref, a) < 100  # FP16 really ran
    placement = graphs.placement(pg, asg)
    assert placement.partitions is not None and placement.partitions >= 1 and (placement.casts or 0) > 0


def test_compiled_torch_unit_on_cuda(setup):
    """compile: inductor: compiled once per assignment (cached), replayed as a CUDA graph, FP16 really run, and
    at least as close to FP32 as the eager per-op path (fusion keeps FP32 inside a kernel), within 3 dB."""
    inner, inputs = setup
    cpu_ref = [t.detach() for t in inner.cpu()(*inputs)]  # an earlier test's prepare moved it to the GPU
    eager = TorchUnit(TorchUnit.Params(device="cuda"))
    comp = TorchUnit(TorchUnit.Params(device="cuda", compile="inductor"))
    assert comp.available() == (True, "") and comp.runtime == "torch:cuda:inductor"
    pe, pc = eager.prepare(inner, inputs), comp.prepare(inner, inputs)
    ops = eager.ops(pe)
    dev_inputs = tuple(t.cuda() for t in inputs)
    asg = Assignment.keep_fp32(ops, [o.name for o in ops if o.type in ("group_norm", "layer_norm", "softmax")])
    fwd = comp.compile(pc, asg)
    assert comp.compile(pc, asg) is fwd  # one compile per assignment
    first = fwd(*dev_inputs)
    again = fwd(*dev_inputs)
    assert fwd.compile_s > 0 and len(fwd.by_shape) == 1
    e16 = eager.compile(pe, asg)(*dev_inputs)
    for a, b, e, ref in zip(first, again, e16, cpu_ref):
        assert a.is_cuda and a.dtype == torch.float32 and torch.isfinite(a).all()
        assert torch.equal(a, b)  # CUDA graph replay
        assert 20 < _snr(ref, a) < 100 and _snr(ref, a) > _snr(ref, e) - 3, (_snr(ref, a), _snr(ref, e))
    assert not hasattr(comp.search_forward(pc, asg), "compile_s")  # searches evaluate on the eager path
    # the graph passes (channels-last, on by default; thin convolutions padded to 8 channels, cuDNN benchmark)
    # keep the accuracy
    plain = TorchUnit(TorchUnit.Params(device="cuda", compile="inductor", channels_last=False))
    passes = TorchUnit(TorchUnit.Params(device="cuda", compile="inductor", pad_channels=True, cudnn_benchmark=True))
    assert comp.params.channels_last == "auto" and not comp.params.pad_channels  # auto: on CUDA
    p16 = plain.compile(plain.prepare(inner, inputs), asg)(*dev_inputs)
    x16 = passes.compile(passes.prepare(inner, inputs), asg)(*dev_inputs)
    for a, p, x, ref in zip(first, p16, x16, cpu_ref):
        assert abs(_snr(ref, x) - _snr(ref, p)) < 3 and _snr(p, x) > 20, (_snr(ref, x), _snr(ref, p), _snr(p, x))
        assert abs(_snr(ref, a) - _snr(ref, p)) < 3 and _snr(p, a) > 20, (_snr(ref, a), _snr(ref, p), _snr(p, a))
    p16 = plain.compile(plain.prepare(inner, inputs), asg)(*dev_inputs)
    for a, p, ref in zip(first, p16, cpu_ref):
        assert abs(_snr(ref, a) - _snr(ref, p)) < 3 and _snr(p, a) > 20, (_snr(ref, a), _snr(ref, p), _snr(p, a))


def test_fp16_noise_on_cuda(setup):
    """The first-order estimate runs on CUDA (main crashed here mixing CPU and CUDA tensors)."""
    inner, inputs = setup
    unit = TorchUnit(TorchUnit.Params(device="cuda"))
    prepared = unit.prepare(inner, inputs)
    noise = unit.fp16_noise(prepared, inputs, lambda outs: outs[1].float().cpu())  # a tail that hands back host tensors
    compute = [o.name for o in unit.ops(prepared) if o.compute]
    assert set(noise) == set(compute)
    assert all(v >= 0 and not math.isnan(v) for v in noise.values())
    on_device = unit.fp16_noise(prepared, inputs, lambda outs: outs[1].float())
    assert set(on_device) == set(noise)
    # The same estimate as on the CPU: CUDA's FP16 kernels round differently, so each of the loudest ops (by
    # the CPU estimate) agrees within 10 dB, not bit for bit.
    cpu = TorchUnit(TorchUnit.Params(device="cpu"))
    on_cpu = cpu.fp16_noise(cpu.prepare(inner, inputs), inputs, lambda outs: outs[1].float())
    for name in sorted(on_cpu, key=lambda n: -on_cpu[n])[:8]:
        assert noise[name] > 0 and abs(10 * math.log10(noise[name] / on_cpu[name])) < 10, (name, noise[name], on_cpu[name])


@pytest.mark.parametrize("policy", [
    {"sensitivity": {"criterion": {"snr_db": 60}, "max_evaluations": 60}},
    {"bisect": {"criterion": {"snr_db": 60}, "max_evaluations": 200}},
])
def test_searches_on_cuda(tmp_path, policy):
    reg = load_registry()
    data = make_config(tmp_path, fixtures=[{"sine_440": {"duration": 1.0}}, {"white_noise": {"duration": 1.0}}],
                       compute=[CUDA_TORCH], precision=["all-fp16", policy])
    cfg = parse_config(data, registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = store.trials([run_id])
    assert all(t.status == "ok" for t in trials), [(t.precision, t.status, t.reason) for t in trials]
    name = next(iter(policy))
    found = [t for t in trials if t.precision.startswith(name)]
    assert found and all(t.runtime == "torch:cuda" for t in found)
    search = found[0].info["search"]
    assert search["passed"], search["status"]
    assert all(t.metrics["snr_db"] >= 60 for t in found)
    if name == "sensitivity":
        assert search["rank_method"] == "first_order", search.get("rank_note")


def test_coreml_emulator_on_cuda(tmp_path):
    from htx_plugins.compute.coreml.unit import CoreMLUnit

    model = random_htdemucs(0, channels=8, depth=4, t_layers=1, segment=1)
    inner = FullHybrid().build(model).eval()
    mix = 0.1 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(1))
    inputs = (spec_to_cac(TorchSTFT().stft(mix)), mix)
    ref = [t.detach() for t in inner(*inputs)]
    unit = CoreMLUnit(CoreMLUnit.Params(runtime="emulated", device="cuda"))
    prepared = unit.prepare(inner, inputs, cache_dir=tmp_path)
    ops = unit.ops(prepared)
    dev_inputs = tuple(t.cuda() for t in inputs)
    out32 = unit.compile(prepared, Assignment.all_fp32())(*dev_inputs)
    out16 = unit.compile(prepared, Assignment.all_fp16(ops))(*dev_inputs)
    for r, a, b in zip(ref, out32, out16):
        assert a.is_cuda and _snr(r, a) > 60  # conversion tolerance, as on the CPU emulator
        assert torch.isfinite(b).all() and 20 < _snr(r, b) < _snr(r, a)


def test_bench_gpu_smoke_eager_sweep_emulator(tmp_path):
    from htx_plugins.compute.gpu_bench import run

    out = tmp_path / "gpu.json"
    rec = run(seconds=4.0, repeats=1, batch_sizes=(1, 2), policy_batch=2, bisect=False, emulator=True,
              out_json=str(out), say=lambda m: None, size="small", compiled=False, peers=False, sweep=True)
    stored = json.loads(out.read_text())
    assert stored["size"] == "small" and stored["provenance"]["device"] == torch.cuda.get_device_name(0)
    assert stored["complete"] is True
    for name in ("fp32", "all-fp16", "bf16", "curated-fp32"):
        row = rec["policies"][name]
        assert row["wall_s"] > 0 and row["nan"] == 0 and row["inf"] == 0 and row["path"] == "eager", (name, row)
    assert rec["policies"]["fp32"]["snr_db"] > 100
    assert "error" not in rec["coreml_emulator"], rec["coreml_emulator"]
    assert set(rec["batch_sweep"]["results"]) == {1, 2} and set(rec["ablations"]) == {"no CUDA graphs", "native group_norm"}


def test_bench_gpu_smoke_compiled_and_peers(tmp_path):
    from htx_plugins.compute.gpu_bench import run

    rec = run(seconds=4.0, repeats=1, bisect=False, out_json=str(tmp_path / "gpu.json"), say=lambda m: None,
              size="small", compiled=True, peers=True, sweep=False)
    assert rec["complete"] and rec["policy_batch"] == rec["flops"]["segments"]  # every segment in one batch
    assert set(rec["peers"]) == {"apply_model fp32", "apply_model compile+autocast fp16", "expert eager autocast fp16",
                                 "expert compiled autocast fp16"}
    for row in rec["peers"].values():
        assert row["wall_s"] > 0 and row["snr_db"] > 20 and row["peak_mem_mb"] > 0
    for name, kind in (("all-fp16 compiled", "fp16"), ("bf16 compiled", "bf16"), ("tf32 compiled", "tf32")):
        row = rec["policies"][name]
        assert row["path"] == "inductor" and row["compile_s"] > 0 and row["peak_kind"] == kind, (name, row)
        assert row["nan"] == 0 and row["inf"] == 0 and row["vs_expert_compiled"] > 0
    assert rec["policies"]["tf32 compiled"]["snr_db"] > rec["policies"]["all-fp16 compiled"]["snr_db"]
    # the ablation of the default channels-last layout (the bench records a failed row: it must not fail)
    bare = rec["policies"]["all-fp16 compiled, no channels-last"]
    assert "error" not in bare and bare["nan"] == 0, bare
    assert abs(bare["snr_db"] - rec["policies"]["all-fp16 compiled"]["snr_db"]) < 3, bare
    assert rec["profile"]["policy"] == rec["fastest"]["policy"] and rec["profile"]["shares"]
