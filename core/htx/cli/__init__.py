"""The ``htx`` command line: one module per command, joined into one typer app.

Plugins add commands (``htx convert``, ``htx bench gpu``, ...) through the ``htx_register_commands(app,
bench)`` hook, exactly as the built-in plugins do.
"""

from __future__ import annotations

import sys

import typer

from htx.cli import (
    bench_cmd,
    check_unit_cmd,
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
from htx.plugins import get_plugin_manager, warn_disabled

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
app.command("check-unit")(check_unit_cmd.check_unit)
app.add_typer(fixtures_cmd.app, name="fixtures")
app.add_typer(bench_cmd.app, name="bench")

#: A built-in plugin that failed to load while the command line was built (reported when a command runs). A
#: broken third-party plugin is disabled instead, with a message, and every command keeps working.
PLUGIN_ERROR: PluginError | None = None


def _register_commands() -> None:
    global PLUGIN_ERROR
    try:
        pm = get_plugin_manager(on_broken=warn_disabled)
    except PluginError as exc:
        PLUGIN_ERROR = exc
        return
    for impl in pm.hook.htx_register_commands.get_hookimpls():
        try:
            args = {"app": app, "bench": bench_cmd.app}
            impl.function(**{k: v for k, v in args.items() if k in impl.argnames})
        except Exception as exc:
            if impl.plugin_name in pm.builtin:
                PLUGIN_ERROR = PluginError(f"Error loading plugin {impl.plugin_name!r}: htx_register_commands raised {exc!r}")
            else:
                warn_disabled(impl.plugin_name, f"htx_register_commands raised {type(exc).__name__}: {exc}")


_register_commands()


def main() -> None:
    if PLUGIN_ERROR is not None:
        typer.echo(f"Error: {PLUGIN_ERROR}", err=True)
        sys.exit(1)
    app()
