"""Core ML benchmark: conversion cache, emulator speed and emulator memory, measured in one run.

On the full-size model (HTDemucs defaults, random init, one 7.8 s segment, batch 1, full-hybrid):

- first conversion (trace + ``ct.convert`` + save + load into the emulator) vs a second ``prepare`` of the
  same model that hits the on-disk cache (target: second / first < 0.05);
- the emulator running the FP32 program vs the torch inner model, per segment on the same device
  (medians of interleaved runs after a warm-up, plus the ratio of process CPU times, which other
  load on a shared machine disturbs less; target <= 2x on CPU);
- peak resident memory while the emulator runs one segment (target < 4 GiB). Method: on Linux the
  kernel's peak-RSS counter (``VmHWM``) is reset through ``/proc/self/clear_refs`` just before the pass and
  read after it; the torch inner model is measured the same way for comparison.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from htx.api import Assignment, spec_to_cac, write_record

GIB = 2**30


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS of this process while ``fn`` runs, and the RSS just before (Linux ``VmHWM`` reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        fn()
        return {"method": f"not measurable here ({type(exc).__name__}: no /proc/self/clear_refs)"}
    before = _proc_status("VmRSS")
    fn()
    peak = _proc_status("VmHWM")
    if before is None or peak is None:
        return {"method": "not measurable here (no VmRSS/VmHWM in /proc/self/status)"}
    return {"method": "VmHWM after reset via /proc/self/clear_refs", "rss_before_gib": before / GIB,
            "peak_gib": peak / GIB, "delta_gib": (peak - before) / GIB}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples


def interleaved(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, list[float], float, list[float], float]:
    """Median wall times of ``a`` and ``b`` run alternately (so load from elsewhere hits both alike),
    and the ratio of their summed process CPU times (b / a)."""
    a()
    b()
    ta, tb, ca, cb = [], [], 0.0, 0.0
    for _ in range(repeats):
        for fn, walls in ((a, ta), (b, tb)):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            if fn is a:
                ca += time.process_time() - c0
            else:
                cb += time.process_time() - c0
    return statistics.median(ta), ta, statistics.median(tb), tb, cb / ca if ca else float("nan")


def run(
    segment: float = 7.8,
    repeats: int = 5,
    device: str = "cpu",
    cache_dir: str | None = None,
    fp16: bool = True,
    out_json: str | None = "experiments/benchmarks/coreml.json",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and print its table; returns the raw record (also written to ``out_json``)."""
    from htx.api import model_hash, random_htdemucs
    from htx_plugins.compute.coreml import CoreMLUnit
    from htx_plugins.stft.torch_stft import demucs_spec
    from htx_plugins.surgery.full_hybrid import FullHybridInner

    torch.backends.mha.set_fastpath_enabled(False)
    dev = torch.device(device)
    model = random_htdemucs(seed=0, segment=segment)
    inner = FullHybridInner(model).eval()
    length = int(model.segment * model.samplerate)
    gen = torch.Generator().manual_seed(0)
    mix = 0.1 * torch.randn(1, model.audio_channels, length, generator=gen)
    spec = spec_to_cac(demucs_spec(mix, model.nfft))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: HTDemucs defaults, random init (seed 0), {n_params / 1e6:.1f} M parameters, hash {model_hash(model)}; "
        f"segment {segment} s ({length} samples), spec_cac {tuple(spec.shape)}, device {dev}, {torch.get_num_threads()} CPU threads")
    rec: dict[str, Any] = {"segment_s": segment, "device": str(dev), "host": platform.node(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "params_m": n_params / 1e6}

    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="htx-bench-coreml-")
        cache = Path(tmp.name)
    else:
        cache = Path(cache_dir)
    try:
        params = CoreMLUnit.Params(runtime="emulated", device=device)
        unit = CoreMLUnit(params)
        t0 = time.perf_counter()
        prepared = unit.prepare(inner, (spec, mix), cache_dir=cache)
        first_s = time.perf_counter() - t0
        meta = prepared.conversion.meta
        say(f"first prepare: {first_s:.1f} s (trace {meta.get('trace_s', float('nan')):.1f} s, convert {meta.get('convert_s', float('nan')):.1f} s, "
            f"cache hit: {prepared.conversion.hit})")
        t0 = time.perf_counter()
        again = CoreMLUnit(params).prepare(inner, (spec, mix), cache_dir=cache)
        second_s = time.perf_counter() - t0
        say(f"second prepare: {second_s:.2f} s (cache hit: {again.conversion.hit}; content hash {again.conversion.key})")
        second_hit = again.conversion.hit
        del again
        rec.update(first_prepare_s=first_s, second_prepare_s=second_s, cache_ratio=second_s / first_s,
                   first_was_hit=prepared.conversion.hit, second_was_hit=second_hit,
                   trace_s=meta.get("trace_s"), convert_s=meta.get("convert_s"))

        ops = unit.ops(prepared)
        rec["ops"] = len(ops)
        rec["compute_ops"] = sum(op.compute for op in ops)
        inner_dev = inner.to(dev)
        args = (spec.to(dev), mix.to(dev))
        emu32 = unit.compile(prepared, Assignment.all_fp32())

        def torch_inner() -> Any:
            with torch.no_grad():
                return inner_dev(*args)

        torch_s, torch_samples, emu_s, emu_samples, cpu_ratio = interleaved(torch_inner, lambda: emu32(*args), repeats)
        with torch.no_grad():
            ref = inner_dev(*args)
        out = emu32(*args)
        max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, out, strict=True))
        say(f"torch inner model: {torch_s * 1000:.0f} ms per segment; emulator FP32: {emu_s * 1000:.0f} ms "
            f"(medians of {repeats} interleaved runs; process CPU time ratio {cpu_ratio:.2f}; max |emulator - torch| {max_diff:.2e})")
        rec.update(torch_inner_ms=torch_s * 1000, emulator_fp32_ms=emu_s * 1000, speed_ratio=emu_s / torch_s,
                   cpu_time_ratio=cpu_ratio,
                   torch_samples_ms=[s * 1000 for s in torch_samples], emulator_samples_ms=[s * 1000 for s in emu_samples],
                   fp32_max_abs_diff=max_diff)
        del ref, out

        mem_torch = peak_rss(torch_inner) if dev.type == "cpu" else {"method": "CPU only"}
        mem_emu = peak_rss(lambda: emu32(*args)) if dev.type == "cpu" else {"method": "CPU only"}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            emu32(*args)
            mem_emu = {"method": "torch.cuda.max_memory_allocated", "peak_gib": torch.cuda.max_memory_allocated(dev) / GIB,
                       "delta_gib": (torch.cuda.max_memory_allocated(dev) - base) / GIB}
        rec["memory_emulator"] = mem_emu
        rec["memory_torch_inner"] = mem_torch
        if "peak_gib" in mem_emu:
            say(f"emulator peak memory: {mem_emu['peak_gib']:.2f} GiB ({mem_emu['delta_gib']:+.2f} GiB over the "
                f"{mem_emu.get('rss_before_gib', 0):.2f} GiB before the pass) [{mem_emu['method']}]")
        if "peak_gib" in mem_torch:
            say(f"torch inner peak memory: {mem_torch['peak_gib']:.2f} GiB ({mem_torch['delta_gib']:+.2f} GiB)")

        if fp16:
            emu16 = unit.compile(prepared, Assignment.all_fp16(ops))
            emu16_s, _ = timed(lambda: emu16(*args), max(1, repeats - 1))
            rec["emulator_fp16_ms"] = emu16_s * 1000
            say(f"emulator all-FP16: {emu16_s * 1000:.0f} ms per segment")
    finally:
        if tmp is not None:
            tmp.cleanup()

    peak = rec["memory_emulator"].get("peak_gib")
    rows = [
        ("emulator FP32 / torch inner model (one segment)", f"{rec['speed_ratio']:.2f}x", "<= 2x", rec["speed_ratio"] <= 2.0),
        ("cached second prepare / first conversion", f"{rec['cache_ratio']:.4f}", "< 0.05", rec["cache_ratio"] < 0.05),
        ("emulator peak memory, one 7.8 s segment" if abs(segment - 7.8) < 1e-9 else f"emulator peak memory, one {segment} s segment",
         "n/a" if peak is None else f"{peak:.2f} GiB", "< 4 GiB", None if peak is None else peak < 4.0),
    ]
    say("")
    say(f"{'measure':<52} {'value':>12} {'target':>8}  met")
    for name, value, target, met in rows:
        say(f"{name:<52} {value:>12} {target:>8}  {'yes' if met else ('n/a' if met is None else 'NO')}")
    rec["targets_met"] = {name: met for name, _, _, met in rows}
    if out_json:
        path = write_record(out_json, rec)
        say(f"raw numbers: {path}")
    return rec
