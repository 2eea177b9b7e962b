"""``htx bench surgery``: every surgery side by side on one model and one segment.

Per variant: FP32 parity with the original ``HTDemucs.forward`` (max abs diff, within rtol 1e-5/atol 1e-7,
SNR), its error against the original model evaluated in float64 next to the original FP32 forward's own
(FP32's noise floor, which on a trained model is about as large as atol 1e-7), whether it converts with coremltools (mlprogram, iOS18, FP32, not loaded) and its MIL op counts, and
the latency of the trial pipeline's stages (STFT, model, iSTFT), measured in interleaved rounds so every
variant sees the same machine load; ratios are against ``full-hybrid``.
"""

from __future__ import annotations

import copy
import os
import platform
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import typer

from htx.api import err, handle_errors, out, percentiles, write_record

VARIANTS = ("full-hybrid", "external-norm", "decomposed-attention", "safe-norm", "time-only")
KEY_OPS = ("scaled_dot_product_attention", "softmax", "matmul", "layer_norm", "square", "reduce_mean", "reduce_max", "sqrt")


def _model_config(model: str) -> Any:
    from htx.api import ModelConfig

    if model == "full":
        return ModelConfig(kind="random", random={})
    return ModelConfig.model_validate({"path": model} if model.endswith((".th", ".safetensors")) else model)


def _error(out: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Max abs diff and SNR (dB) of ``out`` against a float64 ``truth``."""
    e = out.double() - truth
    return float(e.abs().max()), float(10 * torch.log10(truth.pow(2).sum() / e.pow(2).sum()))


def bench_surgery(
    model: str = "demo",
    variants: tuple[str, ...] = VARIANTS,
    repeats: int = 5,
    convert: bool = True,
    device: str = "cpu",
    fastpath_reference: bool = False,
    say: Any = print,
) -> dict[str, Any]:
    """Measure every variant on ``model`` (``demo``, ``full`` = default HTDemucs random init, or a checkpoint path)."""
    from htx.api import Pipeline, load_model, load_registry, spec_to_cac
    from htx_plugins.surgery.conversion import convert_inner, mil_op_types

    registry = load_registry()
    loaded = load_model(_model_config(model))
    net = loaded.model
    dev = torch.device(device)
    stft = registry.create("stft", "torch")
    mix = 0.2 * torch.randn(1, net.audio_channels, loaded.segment_length, generator=torch.Generator().manual_seed(0))
    fastpath_before = torch.backends.mha.get_fastpath_enabled()
    # Reference and variants with torch's fused self-attention fast path off, as conversion and the compute
    # units run (``--fastpath-reference`` takes the reference with it on, torch's default: that kernel alone
    # differs from the unfused path by about 1.6e-7 on the trained demo model).
    torch.backends.mha.set_fastpath_enabled(fastpath_reference)
    with torch.no_grad():
        ref = net(mix)
    torch.backends.mha.set_fastpath_enabled(False)
    # FP32's own noise floor: the original model evaluated in float64 is the yardstick every FP32 forward
    # (the original's included) is measured against.
    with torch.no_grad():
        truth = copy.deepcopy(net).double()(mix.double())
    original_fp64 = _error(ref, truth)

    rows: dict[str, dict[str, Any]] = {}
    inners: dict[str, tuple[Any, Any]] = {}
    for name in variants:
        surgery = registry.create("surgery", name)
        inner = surgery.build(net)
        row: dict[str, Any] = {"variant": name, "needs_stft": surgery.needs_stft}
        pipe = Pipeline(inner, inner, stft if surgery.needs_stft else None, net.nfft, torch.device("cpu"), needs_stft=surgery.needs_stft)
        with torch.no_grad():
            out = pipe(mix)
        diff = (out - ref).abs()
        row["max_abs_diff"] = float(diff.max())
        row["within_tol"] = bool((diff <= 1e-7 + 1e-5 * ref.abs()).all())
        err2 = float((ref - out).pow(2).sum())
        row["snr_db"] = float(10 * torch.log10(ref.pow(2).sum() / err2)) if err2 > 0 else None  # None: identical
        row["fp64_max_abs_diff"], row["fp64_snr_db"] = _error(out, truth)
        if convert:
            spec = spec_to_cac(stft.stft(mix, net.nfft)) if surgery.needs_stft else None
            args, _ = inner.host_pre(spec, mix)
            t0 = time.perf_counter()
            try:
                types = mil_op_types(convert_inner(inner, tuple(args)))
                counts = Counter(t for t in types if t != "const")
                row.update(converts=True, mil_ops=sum(counts.values()), mil_ops_with_const=len(types),
                           mil_key_ops={k: counts.get(k, 0) for k in KEY_OPS}, mil_op_counts=dict(sorted(counts.items())))
            except Exception as exc:
                row.update(converts=False, convert_error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                           convert_traceback=traceback.format_exc(limit=4))
            row["convert_s"] = time.perf_counter() - t0
            say(f"{name}: max abs diff {row['max_abs_diff']:.3e}, converts {row.get('converts')}, {row.get('mil_ops', '-')} MIL ops")
        rows[name] = row
        inners[name] = (surgery, inner)

    net.to(dev)  # every variant shares the model's weights, so this moves them all
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    pipes = {
        name: Pipeline(inner, inner, stft if surgery.needs_stft else None, net.nfft, dev, sync=sync, needs_stft=surgery.needs_stft)
        for name, (surgery, inner) in inners.items()
    }

    # latency: interleaved rounds (one warm-up), so drifting machine load hits every variant alike
    with torch.no_grad():
        for pipe in pipes.values():
            pipe(mix)
            pipe.times.__init__()
        for _ in range(repeats):
            for pipe in pipes.values():
                pipe(mix)
    for name, pipe in pipes.items():
        row = rows[name]
        for stage in ("stft", "model", "istft"):
            samples = getattr(pipe.times, stage)
            row[f"{stage}_ms"] = percentiles([s * 1000 for s in samples])["median"] if samples else 0.0
        row["pipeline_ms"] = row["stft_ms"] + row["model_ms"] + row["istft_ms"]
    torch.backends.mha.set_fastpath_enabled(fastpath_before)
    base = rows.get("full-hybrid")
    for row in rows.values():
        if base is not None:
            row["model_speedup"] = base["model_ms"] / row["model_ms"]
            row["pipeline_speedup"] = base["pipeline_ms"] / row["pipeline_ms"]
    return {
        "benchmark": "surgery",
        "model": loaded.source,
        "model_hash": loaded.hash,
        "segment_s": loaded.segment_length / loaded.samplerate,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "repeats": repeats,
        "reference_mha_fastpath": fastpath_reference,
        "original_fp64_max_abs_diff": original_fp64[0],
        "original_fp64_snr_db": original_fp64[1],
        "host": platform.node(),
        "torch": torch.__version__,
        "rows": list(rows.values()),
    }


def save(result: dict[str, Any], path: Path) -> Path:
    return write_record(path, result)


def command(
    model: str = typer.Option("demo", help="demo, full (default HTDemucs config, random init) or a checkpoint path"),
    repeats: int = typer.Option(5, min=1, help="timed rounds (after one warm-up round)"),
    convert: bool = typer.Option(True, help="convert each variant with coremltools and count its MIL ops"),
    device: str = typer.Option("cpu", help="device for the latency rounds (cpu, cuda, mps); parity runs on cpu"),
    fastpath_reference: bool = typer.Option(False, help="take the reference with torch's fused MHA fast path on (torch's default)"),
    variants: str = typer.Option(",".join(VARIANTS), help="comma-separated surgeries to compare (full-hybrid is the baseline)"),
    save_to: Path | None = typer.Option(None, "--save", help="write the raw result as JSON (e.g. experiments/benchmarks/surgery-demo.json)"),
) -> None:
    """Every surgery on one segment: FP32 parity, conversion and MIL op count, latency and speed-up vs full-hybrid."""
    from rich.table import Table


    @handle_errors
    def _run() -> None:
        names = tuple(v.strip() for v in variants.split(",") if v.strip())
        result = bench_surgery(model, variants=names, repeats=repeats, convert=convert, device=device,
                              fastpath_reference=fastpath_reference, say=lambda m: err().print(m, highlight=False))
        table = Table(title=f"surgery variants: {result['model']}, {result['segment_s']:g} s segment, {device}, {repeats} rounds")
        table.caption = (f"vs fp64: error against the original model evaluated in float64; the original FP32 forward's own: "
                         f"max {result['original_fp64_max_abs_diff']:.2e}, SNR {result['original_fp64_snr_db']:.1f} dB")
        for col in ("variant", "max abs diff", "within tol", "SNR dB", "vs fp64 max", "vs fp64 SNR", "converts", "MIL ops", "stft ms", "model ms",
                    "istft ms", "model speed-up", "pipeline speed-up"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for r in result["rows"]:
            table.add_row(
                r["variant"], f"{r['max_abs_diff']:.2e}", "yes" if r["within_tol"] else "no", "exact" if r["snr_db"] is None else f"{r['snr_db']:.1f}",
                f"{r['fp64_max_abs_diff']:.2e}", f"{r['fp64_snr_db']:.1f}",
                {True: "yes", False: "no"}.get(r.get("converts"), "-"), str(r.get("mil_ops", "-")),
                f"{r['stft_ms']:.1f}", f"{r['model_ms']:.1f}", f"{r['istft_ms']:.1f}",
                f"{r.get('model_speedup', float('nan')):.2f}x", f"{r.get('pipeline_speedup', float('nan')):.2f}x",
            )
        out().print(table)
        if save_to is not None:
            err().print(f"saved {save(result, save_to)}", highlight=False)

    _run()
