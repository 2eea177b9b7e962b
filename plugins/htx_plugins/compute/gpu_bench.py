"""GPU benchmark: full-size HTDemucs latency per precision policy, side by side with its peers.

Everything is measured in one process on one device, on one clip. Peers: demucs's own ``apply_model`` (FP32,
the baseline), ``apply_model`` with its forward under ``torch.compile`` + autocast FP16, and an expert's
pipeline (every segment in one batch through the whole demucs model, autocast FP16, eager and compiled).
htx rows: the pipeline (STFT backend + inner model under a precision assignment + iSTFT + overlap-add) per
policy on the eager per-op path (what searches evaluate) and on ``compile: inductor`` (what a deployer runs),
plus bf16 and TF32 rows. Then FLOPs and the share of peak, the profile of the fastest row, and optionally a
batch sweep, ablations and the Core ML emulator. Warm-up (and compile time) is excluded and reported apart;
timings are medians of ``repeats`` runs with CUDA synchronized around each.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from htx.api import (
    Assignment,
    AudioError,
    Pipeline,
    accuracy,
    load_musicgen,
    separate,
    spec_to_cac,
    write_record,
)

#: Dense (no sparsity) peak throughput in TFLOP/s of the SXM parts, from NVIDIA's datasheets.
PEAKS = {"H100": {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7}, "H200": {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7}}


#: Model sizes: the default demucs HTDemucs, and a small one for smoke runs (the GPU tests).
SIZES: dict[str, dict[str, Any]] = {"full": {}, "small": {"channels": 8, "depth": 4, "t_layers": 1, "segment": 1}}


def padded_to_batch(pipe: Any, batch: int) -> Any:
    """``pipe`` on a fixed batch size: a short last batch is padded with zeros (one CUDA graph per shape)."""

    def fn(chunks: torch.Tensor) -> torch.Tensor:
        n = chunks.shape[0]
        if n < batch:
            chunks = torch.cat([chunks, chunks.new_zeros(batch - n, *chunks.shape[1:])])
        return pipe(chunks)[:n]

    return fn


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (synchronized)."""
    out = None
    for _ in range(warmup):
        out = fn()
    samples = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples, out


def test_clip(seconds: float, samplerate: int = 44100, seed: int = 0) -> tuple[torch.Tensor, str]:
    """A deterministic stereo clip and what it is: a generated song (``fixtures/musicgen.py``) when this is a
    source checkout, else tones plus noise (said so in the second element, and in the benchmark's record)."""
    try:
        mod = load_musicgen()
    except AudioError as exc:
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * samplerate)) / samplerate
        x = 0.2 * np.sin(2 * np.pi * 110 * t) + 0.1 * np.sin(2 * np.pi * 440 * t * (1 + 0.01 * np.sin(t)))
        x = np.stack([x, np.roll(x, 100)]) + 0.05 * rng.standard_normal((2, t.size))
        return torch.from_numpy(x.astype(np.float32)), f"synthetic tones + noise ({exc})"
    song = mod.generate_song(seed=seed, duration=seconds, samplerate=samplerate)
    return torch.from_numpy(np.asarray(song.mix, dtype=np.float32)), f"generated song (musicgen seed {seed})"


def cpu_reference(cpu_model: Any, clip: torch.Tensor) -> np.ndarray:
    """The true FP32 reference, as ``htx run`` computes it (:func:`htx.reference.compute_reference`: demucs's
    ``apply_model`` on the CPU) for ``cpu_model``, a CPU copy of the benchmarked model.

    Not on the GPU: cuDNN would use TF32, and torch's CUDA inverse FFT uses the imaginary part of the DC
    bin that the CPU ignores (31.5 dB apart on the trained demo model; docs/stft.md).
    """
    from htx.api import LoadedModel, compute_reference

    return compute_reference(LoadedModel(cpu_model, "benchmark model", ""), clip.cpu().numpy(), 0.25, 1.0)


def categorize(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("fmha", "flash", "attention", "sdpa", "softmax")):
        return "attention"
    if any(k in n for k in ("fft", "stft", "spectral")):
        return "stft"
    if any(k in n for k in ("norm", "welford", "moments")):
        return "normalization"
    if any(k in n for k in ("conv", "cudnn", "implicit", "winograd", "dgrad", "wgrad", "fprop")):
        return "conv"
    if any(k in n for k in ("gemm", "cutlass", "sm90", "xmma", "ampere", "matmul", "mm_")):
        return "gemm (linear/matmul, incl. convs lowered to GEMM)"
    if any(k in n for k in ("copy", "cast", "convert", "to_", "elementwise", "vectorized", "unrolled")):
        return "elementwise/casts"
    return "other"


def expert_forward(model: Any, compiled: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """What an expert writes by hand: a batch of segments through the whole demucs model (its own STFT
    included) under autocast FP16, optionally ``torch.compile``'d (default mode). With :func:`htx.api.separate`
    and every segment of the clip in one batch, this is the expert pipeline of the GPU-latency issue."""
    fwd = torch.compile(model) if compiled else model

    def run(chunks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            return fwd(chunks).float()

    return run


def apply_model_compiled(model: Any) -> Any:
    """``model`` whose forward is ``torch.compile``'d (same parameters, still an HTDemucs for ``apply_model``)."""
    shallow = copy.copy(model)
    shallow.forward = torch.compile(model.forward)
    return shallow


def run(
    seconds: float = 60.0,
    repeats: int = 5,
    batch_sizes: tuple[int, ...] = (1, 2, 4, 6, 11),
    policy_batch: int = 0,
    bisect: bool = True,
    emulator: bool = False,
    out_json: str | None = None,
    say: Callable[[str], None] = print,
    size: str = "full",
    compiled: bool = True,
    peers: bool = True,
    sweep: bool = False,
    quick: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark and return (and optionally write) its JSON record.

    ``policy_batch`` 0: every segment of the clip in one batch (what the expert pipeline does). The record is
    rewritten after each row (``complete`` false until the end), so a run cut short keeps what it measured.
    """
    from demucs.apply import apply_model

    from htx.api import random_htdemucs
    from htx_plugins.compute.torch_unit import TorchUnit
    from htx_plugins.stft.torch_stft import TorchSTFT
    from htx_plugins.surgery.full_hybrid import FullHybrid

    if not torch.cuda.is_available():
        raise SystemExit("htx bench gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAKS.items() if k in gpu), None)
    rec: dict[str, Any] = {
        "quick": quick,
        "device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(), "clip_s": seconds, "repeats": repeats, "complete": False,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }

    def checkpoint() -> None:
        if out_json:
            write_record(out_json, rec)

    torch.backends.mha.set_fastpath_enabled(False)
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r}: use {' or '.join(SIZES)}")
    model = random_htdemucs(0, **SIZES[size]).to(dev).eval()
    rec["size"] = size
    rec["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    seg_len = int(model.segment * model.samplerate)
    clip, rec["clip"] = test_clip(seconds)
    mix = clip.to(dev)
    n_segments = math.ceil(mix.shape[-1] / int(0.75 * seg_len))
    policy_batch = policy_batch or n_segments
    rec["policy_batch"] = policy_batch
    say(f"{gpu}, torch {torch.__version__}; {size}-size HTDemucs {rec['params_m']:.1f} M params; {seconds:.0f} s clip "
        f"({n_segments} segments): {rec['clip']}")

    # FLOPs of one segment (FP32 model): every row's achieved throughput uses it
    from torch.utils.flop_counter import FlopCounterMode

    inner = FullHybrid().build(model)
    stft = TorchSTFT()
    ex_mix = 0.1 * torch.randn(1, 2, seg_len, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        inner(spec_to_cac(stft.stft(ex_mix, model.nfft)), ex_mix)
    flops_seg = fc.get_total_flops()
    total_flops = flops_seg * n_segments
    rec["flops"] = {"per_segment_gflop": flops_seg / 1e9, "per_audio_second_gflop": flops_seg / (seg_len / model.samplerate) / 1e9,
                    "segments": n_segments, "total_tflop": total_flops / 1e12}

    def throughput(row: dict[str, Any], kind: str) -> None:
        ach = total_flops / row["wall_s"] / 1e12
        row["achieved_tflops"] = ach
        row["peak_kind"] = kind
        row["fraction_of_peak"] = ach / peak[kind] if peak else None

    cpu_model = copy.deepcopy(model).cpu()  # one CPU copy for the references
    ref_np = cpu_reference(cpu_model, mix)

    def peak_mem(fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20

    # peers: demucs's apply_model (eager FP32; compiled + autocast) and the expert pipeline (eager; compiled)
    peer_rows: dict[str, Any] = {}
    rec["peers"] = peer_rows

    def peer(name: str, fn: Callable[[], torch.Tensor], kind: str, note: str) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()  # warm-up: compiles, if compiled
        first_s = time.perf_counter() - t0
        with torch.no_grad():
            wall, samples, out = timed(fn, repeats, warmup=1)
            mem = peak_mem(fn)
        snr = accuracy(ref_np, out.float().cpu().numpy(), 1e-3, 1e-4)["snr_db"]
        row = {"wall_s": wall, "samples": samples, "snr_db": snr, "peak_mem_mb": mem, "first_call_s": first_s, "what": note}
        throughput(row, kind)
        peer_rows[name] = row
        say(f"  {name:34s} {wall * 1000:8.1f} ms  SNR {snr:6.2f} dB  peak {mem:7.0f} MiB  "
            f"{row['achieved_tflops']:6.1f} TFLOP/s  (first call {first_s:.0f} s)")
        checkpoint()

    def apply(m: Any) -> Callable[[], torch.Tensor]:
        return lambda: apply_model(m, mix[None], shifts=0, split=True, overlap=0.25, device=dev, progress=False)[0]

    say("baseline and peers (same clip, same device, one process):")
    peer("apply_model fp32", apply(model), "tf32", "demucs apply_model, FP32, segments one at a time")
    base_s = peer_rows["apply_model fp32"]["wall_s"]
    rec["baseline"] = dict(peer_rows["apply_model fp32"])
    if peers:
        def autocast_apply(m: Any) -> Callable[[], torch.Tensor]:
            inner_fn = apply(m)

            def fn() -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.float16):
                    return inner_fn().float()
            return fn

        if not quick:
            peer("apply_model compile+autocast fp16", autocast_apply(apply_model_compiled(model)), "fp16",
                 "demucs apply_model, forward under torch.compile (default mode) and autocast fp16")
        for compiled_peer in ((True,) if quick else (False, True)):
            name = "expert compiled autocast fp16" if compiled_peer else "expert eager autocast fp16"
            fwd = expert_forward(model, compiled_peer)
            peer(name, lambda fwd=fwd: separate(fwd, mix, seg_len, len(model.sources), 0.25, 1.0, n_segments), "fp16",
                 f"all {n_segments} segments in one batch through the whole demucs model, "
                 + ("torch.compile (default mode), " if compiled_peer else "eager, ") + "autocast fp16")
    expert = peer_rows.get("expert compiled autocast fp16")

    def build(low: str, batch: int, compile_mode: str = "off", **params: Any) -> tuple[Any, Any]:
        return build_from({"device": "cuda", "low_dtype": low, "compile": compile_mode, **params}, batch)

    def build_from(params: dict[str, Any], batch: int) -> tuple[Any, Any]:
        unit = TorchUnit(TorchUnit.Params(**params))
        ex = 0.1 * torch.randn(batch, 2, seg_len, device=dev)
        prepared = unit.prepare(inner, (spec_to_cac(stft.stft(ex, model.nfft)), ex))
        return unit, prepared

    def pipeline_run(unit: Any, prepared: Any, assignment: Assignment, batch: int) -> tuple[float, list[float], np.ndarray, float, float | None]:
        pipe = _pipeline(unit, prepared, assignment, inner, stft, model.nfft)
        fn = padded_to_batch(pipe, batch)

        def sep() -> torch.Tensor:
            return separate(fn, mix, seg_len, len(model.sources), 0.25, 1.0, batch)

        wall, samples, out = timed(sep, repeats)
        mem = peak_mem(sep)
        if getattr(pipe.forward, "failed", None):
            say(f"    (CUDA graph capture failed, ran eagerly: {pipe.forward.failed[:160]})")
        return wall, samples, out.float().cpu().numpy(), mem, pipe.compile_s

    from htx_plugins.precision.static import CURATED_DEFAULT

    policies: dict[str, tuple[str, Callable[[list], Assignment]]] = {
        "fp32": ("fp16", lambda ops: Assignment.all_fp32()),
        "all-fp16": ("fp16", lambda ops: Assignment.all_fp16(ops)),
        "bf16": ("bf16", lambda ops: Assignment.all_fp16(ops)),
        "curated-fp32": ("fp16", lambda ops: Assignment.keep_fp32(ops, [o.name for o in ops if o.type in CURATED_DEFAULT])),
    }
    results: dict[str, Any] = {}
    rec["policies"] = results
    prepared_by_low: dict[str, Any] = {}
    for low in ("fp16", "bf16"):
        prepared_by_low[low] = build(low, policy_batch)
    ops = prepared_by_low["fp16"][0].ops(prepared_by_low["fp16"][1])
    rec["n_ops"] = sum(o.compute for o in ops)

    built: dict[str, tuple[Any, Any]] = {}  # row -> (unit, prepared): the profile reuses the fastest row's compile
    #: row -> (unit params, assignment): what the sweep and the profile rebuild the fastest row from
    recipes: dict[str, tuple[dict[str, Any], Assignment]] = {}

    def measure(name: str, unit_prepared: tuple[Any, Any], assignment: Assignment, path: str, kind: str) -> dict[str, Any]:
        unit, prepared = unit_prepared
        built[name] = unit_prepared
        recipes[name] = (unit.params.model_dump(), assignment)
        wall, samples, out, mem, compile_s = pipeline_run(unit, prepared, assignment, policy_batch)
        m = accuracy(ref_np, out, 1e-3, 1e-4)
        row = results[name] = {
            "wall_s": wall, "samples": samples, "speedup": base_s / wall, "rtf": wall / seconds, "snr_db": m["snr_db"],
            "max_abs_diff": m["max_abs_diff"], "nan": m["nan_count"], "inf": m["inf_count"], "peak_mem_mb": mem,
            "fp16_op_fraction": assignment.fp16_fraction(ops), "batch": policy_batch, "path": path,
            "runtime": unit.runtime, "compile_s": compile_s,
        }
        if expert:
            row["vs_expert_compiled"] = expert["wall_s"] / wall
        throughput(row, kind)
        snr = m["snr_db"] if m["snr_db"] is not None else float("nan")
        say(f"  {name:24s} {wall * 1000:8.1f} ms  x{base_s / wall:5.2f} vs apply_model"
            + (f"  x{row['vs_expert_compiled']:4.2f} vs expert" if expert else "")
            + f"  SNR {snr:6.2f} dB  peak {mem:6.0f} MiB  {row['achieved_tflops']:5.1f} TFLOP/s"
            + (f"  (compile {compile_s:.0f} s)" if compile_s else ""))
        checkpoint()
        return row

    say(f"htx pipeline, eager per-op dispatch (batch {policy_batch} segments, CUDA graphs):")
    for name, (low, choose) in policies.items():
        if not quick or name == "all-fp16":
            measure(name, prepared_by_low[low], choose(ops), "eager", "tf32" if name == "fp32" else low)

    bisect_fp32: list[str] | None = None
    if bisect:
        try:
            results["bisect"] = _bisect(prepared_by_low, ops, inner, stft, model, cpu_model, mix, ref_np, seg_len,
                                        policy_batch, pipeline_run, base_s, seconds, say)
            bisect_fp32 = results["bisect"]["fp32_ops"]
            recipes["bisect"] = (prepared_by_low["fp16"][0].params.model_dump(), Assignment.keep_fp32(ops, bisect_fp32))
            throughput(results["bisect"], "fp16")
            if expert:
                results["bisect"]["vs_expert_compiled"] = expert["wall_s"] / results["bisect"]["wall_s"]
        except Exception as exc:  # the search plugin may be missing in a partial install
            results["bisect"] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  bisect: not run ({type(exc).__name__}: {exc})")
        checkpoint()

    if compiled:
        say(f"htx pipeline, compile: inductor (batch {policy_batch} segments, CUDA graphs; compile time apart):")

        def compiled_row(name: str, low: str, asg: Assignment, kind: str, **params: Any) -> None:
            """One compiled row; a graph the compiler or cuDNN rejects is recorded as the row's error."""
            try:
                row = measure(name, build(low, policy_batch, compile_mode="inductor", **params), asg, "inductor", kind)
            except Exception as exc:
                results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                say(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:200]})")
                return
            if name.startswith("bisect"):
                row["fp32_ops"] = bisect_fp32

        all16 = Assignment.all_fp16(ops)
        compiled_row("all-fp16 compiled", "fp16", all16, "fp16")
        if bisect_fp32 is not None:
            compiled_row("bisect compiled", "fp16", Assignment.keep_fp32(ops, bisect_fp32), "fp16")
        if not quick:
            compiled_row("bf16 compiled", "bf16", all16, "bf16")
            compiled_row("tf32 compiled", "fp16", Assignment.all_fp32(), "tf32", tf32=True)
        # what the default channels-last layout buys: the best FP16 answer (bisect's, else all-fp16) without it
        if bisect_fp32 is not None:
            compiled_row("bisect compiled, no channels-last", "fp16", Assignment.keep_fp32(ops, bisect_fp32), "fp16",
                         channels_last=False)
        else:
            compiled_row("all-fp16 compiled, no channels-last", "fp16", all16, "fp16", channels_last=False)

    # quality bars: the fastest htx row at each bar, and how it compares with the expert pipeline
    bars = {}
    for bar in (60.0, 40.0, 30.0):
        ok = {k: v for k, v in results.items() if "wall_s" in v and v["snr_db"] is not None and v["snr_db"] >= bar}
        if ok:
            best = min(ok, key=lambda k: ok[k]["wall_s"])
            bars[f"snr>={bar:g}"] = {"policy": best, "wall_s": ok[best]["wall_s"], "speedup": ok[best]["speedup"],
                                     "snr_db": ok[best]["snr_db"], "vs_expert_compiled": ok[best].get("vs_expert_compiled")}
    rec["quality_bars"] = bars
    fastest = min((k for k, v in results.items() if "wall_s" in v), key=lambda k: results[k]["wall_s"])
    rec["fastest"] = {"policy": fastest, "speedup": results[fastest]["speedup"],
                      "vs_expert_compiled": results[fastest].get("vs_expert_compiled"),
                      "fraction_of_peak": results[fastest].get("fraction_of_peak")}
    say("fastest htx row per quality bar: " + "; ".join(
        f"{k}: {v['policy']} {v['wall_s'] * 1000:.1f} ms" + (f" (x{v['vs_expert_compiled']:.2f} vs expert)" if v.get("vs_expert_compiled") else "")
        for k, v in bars.items()))
    fr = results[fastest].get("fraction_of_peak")
    say(f"FLOPs: {flops_seg / 1e9:.0f} GFLOP per segment; fastest ({fastest}) achieves {results[fastest]['achieved_tflops']:.1f} TFLOP/s"
        + (f" = {100 * fr:.1f}% of dense FP16 peak" if fr else ""))
    checkpoint()

    params, chosen = recipes[fastest]
    if sweep:
        sweep_rows = {}
        for b in batch_sizes:
            unit, prepared = build_from(params, b)
            wall, _, _, mem, _ = pipeline_run(unit, prepared, chosen, b)
            sweep_rows[b] = {"wall_s": wall, "speedup": base_s / wall, "peak_mem_mb": mem}
            say(f"  batch {b:3d}: {wall * 1000:8.1f} ms  x{base_s / wall:5.2f}  peak {mem:7.0f} MiB")
        rec["batch_sweep"] = {"policy": fastest, "results": sweep_rows}
        ablations = {}
        for label, kw in (("no CUDA graphs", {"cuda_graphs": False}), ("native group_norm", {"group_norm": "native"})):
            unit, prepared = build_from({**params, **kw}, policy_batch)
            wall, _, _, _, _ = pipeline_run(unit, prepared, chosen, policy_batch)
            ablations[label] = {"policy": fastest, "wall_s": wall, "speedup": base_s / wall}
            say(f"  {fastest} with {label}: {wall * 1000:.1f} ms  x{base_s / wall:.2f}")
        rec["ablations"] = ablations
        checkpoint()

    # profile of the fastest row: where the GPU time goes
    unit_p = built.get(fastest) or build_from(params, policy_batch)
    rec["profile"] = {"policy": fastest, **_profile(unit_p, chosen, inner, stft, model, mix, seg_len, policy_batch)}
    say(f"profile of {fastest}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rec["profile"]["shares"].items()))

    # htx's own overhead: grid expansion + one store write, relative to one trial
    rec["overhead"] = _overhead(results[fastest]["wall_s"])
    say(f"htx overhead per trial: {rec['overhead']['overhead_ms']:.2f} ms = {100 * rec['overhead']['fraction']:.3f}% of a trial")

    if emulator:
        rec["coreml_emulator"] = _emulator(inner, stft, model, seg_len, dev, say)

    rec["complete"] = True
    checkpoint()
    return rec


def _bisect(prepared_by_low, ops, inner, stft, model, cpu_model, mix, ref_np, seg_len, batch, pipeline_run, base_s, seconds, say):
    """Find the bisect FP32 set (criterion SNR >= 60 dB on the first 10 s) and time it on the full clip."""
    from htx.api import SearchContext, load_registry, run_search

    reg = load_registry()
    policy = reg.create("precision", "bisect", {"criterion": {"snr_db": 60}, "granularity": "type-then-instance", "max_seconds": 150})
    unit, prepared = prepared_by_low["fp16"]
    short = mix[..., : int(10 * model.samplerate)]

    ref_short = cpu_reference(cpu_model, short)  # the 10 s clip's own reference (its segments differ from the 60 s clip's)

    def evaluate(asg: Assignment) -> dict[str, Any]:
        fwd = unit.compile(prepared, asg)
        pipe = Pipeline(inner, fwd, stft, model.nfft, torch.device("cuda"), sync=_sync)

        fn = padded_to_batch(pipe, batch)

        out = separate(fn, short, seg_len, len(model.sources), 0.25, 1.0, batch).float().cpu().numpy()
        m = accuracy(ref_short, out, 1e-3, 1e-4)
        return {**m, "finite": m["nan_count"] == 0 and m["inf_count"] == 0, "per_fixture": {"clip10s": m},
                "fp16_op_fraction": asg.fp16_fraction(ops)}

    ctx = SearchContext(ops, evaluate=evaluate, record=lambda a: unit.record(prepared, a, prepared.example_inputs))
    t0 = time.perf_counter()
    result = run_search(policy, ctx)
    search_s = time.perf_counter() - t0
    wall, samples, out, mem, _ = pipeline_run(unit, prepared, result.assignment, batch)
    m = accuracy(ref_np, out, 1e-3, 1e-4)
    fp32_ops = sorted(set(o.name for o in ops if o.compute) - set(result.assignment.fp16))
    say(f"  {'bisect':14s} {wall * 1000:8.1f} ms  x{base_s / wall:5.2f} vs demucs  SNR {m['snr_db']:7.2f} dB  "
        f"peak {mem:7.0f} MiB  fp32 set {len(fp32_ops)} ops, {result.evaluations or ctx.evaluations} evaluations in {search_s:.0f} s")
    return {"wall_s": wall, "samples": samples, "speedup": base_s / wall, "rtf": wall / seconds, "snr_db": m["snr_db"],
            "max_abs_diff": m["max_abs_diff"], "nan": m["nan_count"], "inf": m["inf_count"], "peak_mem_mb": mem,
            "fp16_op_fraction": result.assignment.fp16_fraction(ops), "fp32_ops": fp32_ops, "path": "eager", "runtime": unit.runtime,
            "evaluations": result.evaluations or ctx.evaluations, "search_s": search_s, "batch": batch}


def _pipeline(unit: Any, prepared: Any, assignment: Assignment, inner: Any, stft: Any, n_fft: int,
              device: torch.device | None = None) -> Pipeline:
    """The pipeline a trial of ``unit`` runs (as the builder makes it): on ``compile: inductor`` the whole
    segment (the torch STFT, model, iSTFT) is one compiled graph, else the stages run around the forward."""
    return Pipeline(inner, None, stft, n_fft, device or torch.device("cuda"), sync=_sync).compile_with(
        stft.in_graph(), lambda wrap: unit.compile_segment(prepared, assignment, wrap),
        lambda: unit.compile(prepared, assignment))


def kernel_profile(fn: Callable[[], Any], top: int = 12) -> dict[str, Any]:
    """GPU time of one call of ``fn`` (warmed already): total, shares by kernel category, the ``top`` kernels."""
    from torch.profiler import ProfilerActivity, profile

    _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync()
    kernels: dict[str, float] = {}
    for evt in prof.key_averages():
        dt = getattr(evt, "device_type", None)
        t = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if t and (dt is None or "CUDA" in str(dt)):
            kernels[evt.key] = kernels.get(evt.key, 0.0) + float(t)
    total = sum(kernels.values()) or 1.0
    shares: dict[str, float] = {}
    for name, t in kernels.items():
        c = categorize(name)
        shares[c] = shares.get(c, 0.0) + t / total
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return {"total_gpu_ms": total / 1000.0, "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": k[:120], "ms": v / 1000.0, "share": v / total} for k, v in ranked]}


def _profile(unit_prepared, assignment, inner, stft, model, mix, seg_len, batch) -> dict[str, Any]:
    unit, prepared = unit_prepared
    pipe = _pipeline(unit, prepared, assignment, inner, stft, model.nfft)
    fn = padded_to_batch(pipe, batch)
    separate(fn, mix, seg_len, len(model.sources), 0.25, 1.0, batch)  # warm (captures graphs)
    return kernel_profile(lambda: separate(fn, mix, seg_len, len(model.sources), 0.25, 1.0, batch))


def _overhead(trial_s: float) -> dict[str, Any]:
    import tempfile

    from htx.api import Session, Store, TrialRecord, parse_config

    cfg = parse_config({"name": "o", "fixtures": ["sine_440", "white_noise", "silence"],
                        "precision": ["fp32", "all-fp16", "curated-fp32"]})
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "o.sqlite") as store:
        run_id = store.create_run("o", {}, None, "x", "h")
        session = Session(cfg)
        t0 = time.perf_counter()
        n = 20
        for i in range(n):
            specs = session.specs()
            store.write_trial(TrialRecord(run_id, f"t{i}", i, "f", "ok", axes={"surgery": "s", "precision": "p", "stft": "b", "compute": "c"},
                                          metrics={f"m{k}": float(k) for k in range(40)}, info={"x": list(range(50))}))
        per = (time.perf_counter() - t0) / n
    del specs
    return {"overhead_ms": per * 1000, "trial_s": trial_s, "fraction": per / trial_s}


def _emulator(inner, stft, model, seg_len, dev, say) -> dict[str, Any]:
    try:
        from htx.api import load_registry

        reg = load_registry()
        if "coreml" not in reg.names("compute"):
            return {"error": "coreml compute unit not installed"}
        unit = reg.create("compute", "coreml", {"runtime": "emulated", "device": "cuda"})
        ex_mix = 0.1 * torch.randn(1, 2, seg_len)
        ex_spec = spec_to_cac(stft.stft(ex_mix, model.nfft))
        t0 = time.perf_counter()
        prepared = unit.prepare(inner.to("cpu"), (ex_spec, ex_mix), cache_dir=Path("experiments/cache"))
        conv_s = time.perf_counter() - t0
        inner.to(dev)
        fwd = unit.compile(prepared, Assignment.all_fp32())
        args = (ex_spec.to(dev), ex_mix.to(dev))
        with torch.no_grad():
            emu_s, _, _ = timed(lambda: fwd(*args), 5)
            torch_s, _, _ = timed(lambda: inner(*args), 5)
        say(f"Core ML emulator on CUDA: {emu_s * 1000:.1f} ms per segment vs torch inner {torch_s * 1000:.1f} ms (x{emu_s / torch_s:.2f}); conversion {conv_s:.0f} s")
        return {"emulator_ms": emu_s * 1000, "torch_inner_ms": torch_s * 1000, "ratio": emu_s / torch_s, "conversion_s": conv_s}
    except Exception as exc:
        say(f"Core ML emulator on CUDA: not measured ({type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}


def command(
    seconds: float = typer.Option(60.0, help="clip length in seconds"),
    repeats: int = typer.Option(5, help="timed repeats (median reported)"),
    batch: int = typer.Option(0, help="segments per batch for the htx rows (0: every segment of the clip in one batch)"),
    bisect: bool = typer.Option(True, help="also search and time the best bisect assignment"),
    compiled: bool = typer.Option(True, "--compiled/--no-compiled", help="also time htx's compile: inductor rows (all-fp16, bisect, bf16, tf32)"),
    peers: bool = typer.Option(True, "--peers/--no-peers", help="also time apply_model compiled + autocast and the expert pipeline (eager, compiled)"),
    sweep: bool = typer.Option(False, "--sweep/--no-sweep", help="also sweep the batch size and the ablations for the fastest row"),
    emulator: bool = typer.Option(False, help="also time the Core ML emulator on CUDA"),
    quick: bool = typer.Option(False, "--quick", help="the goal rows only: apply_model FP32, the expert compiled, htx all-fp16 eager, bisect, and the compiled all-fp16 / bisect / bisect without channels-last rows (no bf16, tf32, apply_model compiled, expert eager)"),
    out: str = typer.Option("experiments/benchmarks/gpu.json", help="where to write the raw JSON"),
    size: str = typer.Option("full", help="full (the default HTDemucs) or small (a smoke run: 8 channels, 1 s segments)"),
) -> None:
    """HTDemucs on a CUDA GPU (full size by default): htx's rows, eager and compiled, beside apply_model and an expert's pipeline."""
    run(seconds=seconds, repeats=repeats, policy_batch=batch, bisect=bisect, emulator=emulator, out_json=out, size=size,
        compiled=compiled, peers=peers, sweep=sweep, quick=quick)
