"""``htx leaderboard``: read the store, filter, sort, mark the Pareto front, export."""

from __future__ import annotations

from pathlib import Path

import typer

from htx.config import DEFAULT_DB
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.leaderboard import collect, export, misses, rich_table
from htx.store import Store
from htx.summary import summary_table


@handle_errors
def leaderboard(
    run: str = typer.Option(None, "--run", help="a run id (default: the latest run)"),
    all_runs: bool = typer.Option(False, "--all", help="every run in the store"),
    sort: str = typer.Option(None, "--sort", help="column to sort by; prefix - for descending, e.g. -snr_db"),
    where: str = typer.Option(None, "--where", help="filter, e.g. 'snr_db > 40 and precision == \"all-fp16\"'"),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or md"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    check: bool = typer.Option(False, "--check", help="exit 1 when any shown trial failed or misses the targets (a CI gate)"),
    by: str = typer.Option("combination", "--by", help="table view: combination (one row each, over its fixtures) or fixture"),
) -> None:
    """Show trials of a run (or all runs) ranked by accuracy, with pass/fail and Pareto marks."""
    if not db.exists():
        raise HtxError(f"No results in {db}. Run `htx run CONFIG` first.")
    if fmt not in ("table", "csv", "json", "md"):
        raise HtxError(f"unknown --format {fmt!r}: use table, csv, json or md")
    with Store(db) as store:
        rows = collect(store, run=run, all_runs=all_runs, where=where, sort=sort)
    o = out()
    if by not in ("combination", "fixture"):
        raise HtxError(f"--by {by!r}: use combination or fixture")
    if fmt == "table":
        o.print(rich_table(rows) if by == "fixture" else summary_table(rows))
    else:
        typer.echo(export(rows, fmt), nl=False)
    if check:
        missed = misses(rows)
        if missed:
            err().print(f"check: {len(missed)} of {len(rows)} trials miss the targets", highlight=False)
            raise typer.Exit(1)
