"""The ``htx`` command line: one module per command, joined into one typer app."""

from __future__ import annotations

import typer

from htx.cli import (
    bench_cmd,
    convert_cmd,
    fixtures_cmd,
    leaderboard_cmd,
    nan_sources_cmd,
    ops_cmd,
    plugins_cmd,
    run_cmd,
    separate_cmd,
    show_cmd,
    validate_cmd,
)

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
app.command("convert")(convert_cmd.convert)
app.command("ops")(ops_cmd.ops)
app.command("separate")(separate_cmd.separate)
app.command("nan-sources")(nan_sources_cmd.nan_sources)
app.add_typer(fixtures_cmd.app, name="fixtures")
app.add_typer(bench_cmd.app, name="bench")


def main() -> None:
    app()
