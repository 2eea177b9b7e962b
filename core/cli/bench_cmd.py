"""``htx bench ...``: benchmarks that print ratios measured side by side in one run.

Each benchmark is a sub-command defined in its own module under ``htx.bench`` and added here.
Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import typer

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
