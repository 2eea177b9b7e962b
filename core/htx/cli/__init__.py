"""The ``htx`` command line: one module per command, joined into one typer app.

Plugins add commands (``htx convert``, ``htx bench gpu``, ...) through the ``htx_register_commands(app,
bench)`` hook, exactly as the built-in plugins do.
"""

from __future__ import annotations

import sys

import typer

from htx.cli import (
    bench_cmd,
    export_cmd,
    fixtures_cmd,
    leaderboard_cmd,
    nan_sources_cmd,
    ops_cmd,
    plugins_cmd,
    report_cmd,
    run_cmd,
    separate_cmd,
    show_cmd,
    validate_cmd,
)
from htx.errors import PluginError
from htx.plugins import get_plugin_manager

app = typer.Typer(
    name="htx",
    help="htx: a precision laboratory for HTDemucs (FP16/FP32 per op, STFT parity, surgery, latency).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("validate")(validate_cmd.validate)
app.command("plugins")(plugins_cmd.plugins)
app.command("leaderboard")(leaderboard_cmd.leaderboard)
app.command("show")(show_cmd.show)
app.command("report")(report_cmd.report)
app.command("ops")(ops_cmd.ops)
app.command("export")(export_cmd.export)
app.command("separate")(separate_cmd.separate)
app.command("nan-sources")(nan_sources_cmd.nan_sources)
app.add_typer(fixtures_cmd.app, name="fixtures")
app.add_typer(bench_cmd.app, name="bench")

#: A plugin that failed to load while the command line was built (reported when a command runs).
PLUGIN_ERROR: PluginError | None = None
try:
    get_plugin_manager().hook.htx_register_commands(app=app, bench=bench_cmd.app)
except PluginError as exc:
    PLUGIN_ERROR = exc


def main() -> None:
    if PLUGIN_ERROR is not None:
        typer.echo(f"Error: {PLUGIN_ERROR}", err=True)
        sys.exit(1)
    app()
