"""``htx fixtures list``: built-in and shipped fixtures."""

from __future__ import annotations

import typer
from rich.table import Table

from htx.cli.common import handle_errors, out
from htx.fixtures import describe_fixtures

app = typer.Typer(help="Test audio: built-in generators and shipped clips with true stems.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_fixtures() -> None:
    """Show fixtures with their duration and whether true stems are available."""
    table = Table(title="htx fixtures")
    for col in ("name", "kind", "duration", "stems", "description"):
        table.add_column(col)
    for r in describe_fixtures():
        dur = f"{r['duration_s']:.1f} s" if r["duration_s"] else "configurable (default: one model segment)"
        table.add_row(r["name"], r["kind"], dur, "yes" if r["stems"] else "no", r["description"])
    out().print(table)
