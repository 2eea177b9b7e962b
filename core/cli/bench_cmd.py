"""``htx bench ...``: benchmarks that print ratios measured side by side in one run.

Each benchmark is a sub-command defined in its own module under ``htx.bench`` and added here.
Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import typer

from htx.bench import executors as bench_executors

app = typer.Typer(help="Benchmarks: ratios measured side by side in one run on this machine.", no_args_is_help=True)
app.command("executors")(bench_executors.command)
