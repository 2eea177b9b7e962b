"""``htx bench ...``: benchmarks that print ratios measured side by side in one run.

Each benchmark is a sub-command defined in its own module under ``htx.bench`` and added here.
Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import typer

from htx.bench import executors as bench_executors
from htx.bench import surgery as surgery_bench
from htx.cli import bench_search_cmd
from htx.cli.common import err, handle_errors, out

app = typer.Typer(help="Benchmarks: ratios measured side by side in one run on this machine.", no_args_is_help=True)


@app.command("gpu")
def gpu(
    seconds: float = typer.Option(60.0, help="clip length in seconds"),
    repeats: int = typer.Option(5, help="timed repeats (median reported)"),
    batch: int = typer.Option(4, help="segments per batch for the policy comparison"),
    bisect: bool = typer.Option(True, help="also search and time the best bisect assignment"),
    emulator: bool = typer.Option(True, help="also time the Core ML emulator on CUDA"),
    out: str = typer.Option("experiments/benchmarks/gpu.json", help="where to write the raw JSON"),
) -> None:
    """Full-size HTDemucs on a CUDA GPU: each precision policy vs demucs's own apply_model."""
    from htx.bench import gpu as bench_gpu

    bench_gpu.run(seconds=seconds, repeats=repeats, policy_batch=batch, bisect=bisect, emulator=emulator, out_json=out)


@app.command("stft")
@handle_errors
def stft(
    seconds: float = typer.Option(60.0, "--seconds", min=0.1, help="length of the stereo test clip"),
    repeats: int = typer.Option(5, "--repeats", min=1, help="interleaved timing rounds (the median is shown)"),
    backends: list[str] = typer.Option(None, "--stft", help="backend name (repeatable); default: every registered one"),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="also print parity vs the exact Demucs STFT"),
) -> None:
    """Forward + inverse STFT per backend: throughput relative to torch and to the memory-bandwidth bound."""
    from htx.bench import stft as bench
    from htx.plugins import load_registry

    reg = load_registry()
    names = backends or reg.names("stft")
    if "torch" in names:  # the reference row first
        names = ["torch", *(n for n in names if n != "torch")]
    plugins = [reg.create("stft", n) for n in names]
    err().print(f"timing {', '.join(names)} on {seconds:g} s of stereo audio ...", highlight=False)
    result = bench.run(plugins, seconds=seconds, repeats=repeats)
    rows = bench.parity(plugins) if parity else None
    bench.print_report(out(), result, rows)

app.command("surgery")(surgery_bench.command)


@app.command("coreml")
def coreml(
    segment: float = typer.Option(7.8, help="segment length in seconds (the released HTDemucs models use 7.8)"),
    repeats: int = typer.Option(5, help="timed repeats of each, interleaved (medians reported)"),
    device: str = typer.Option("cpu", help="device of the emulator and the torch baseline: cpu or cuda"),
    cache_dir: str = typer.Option(None, help="conversion cache to use (default: a fresh temporary one, so the first conversion is measured)"),
    fp16: bool = typer.Option(True, help="also time the all-FP16 emulation"),
    out: str = typer.Option("experiments/benchmarks/coreml.json", help="where to write the raw JSON"),
) -> None:
    """Full-size HTDemucs on the Core ML unit: conversion cache, emulator speed and peak memory."""
    from htx.bench import coreml as bench_coreml

    bench_coreml.run(segment=segment, repeats=repeats, device=device, cache_dir=cache_dir, fp16=fp16, out_json=out)

app.command("search")(bench_search_cmd.bench_search)

app.command("executors")(bench_executors.command)
