"""``htx bench ...``: benchmarks that print ratios measured side by side in one run.

The group holds ``htx bench executors`` (the core's executors); every other benchmark belongs to a plugin
and is added through the ``htx_register_commands(app, bench)`` hook (``gpu`` and ``coreml`` by the compute
units, ``stft``, ``surgery``, ``search``). Benchmarks are never timed assertions in tests.
"""

from __future__ import annotations

import typer

from htx.cli import bench_executors_cmd

app = typer.Typer(help="Benchmarks: ratios measured side by side in one run on this machine.", no_args_is_help=True)
app.command("executors")(bench_executors_cmd.command)
