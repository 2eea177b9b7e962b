"""``htx report [RUN] --out DIR``: a self-contained HTML report with plots (see :mod:`htx.report`)."""

from __future__ import annotations

from pathlib import Path

import typer

from htx.config import DEFAULT_DB
from htx.console import handle_errors, out
from htx.errors import HtxError
from htx.report import build_report
from htx.store import Store


@handle_errors
def report(
    run_id: str = typer.Argument("latest", help="run id (see `htx leaderboard --all`), or 'latest'"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    out_dir: Path = typer.Option(None, "--out", help="folder for report.html and its PNGs (default: reports/RUN_ID)"),
    trial: str = typer.Option(None, "--trial", help="trial id for the per-op precision map (default: the cheapest passing search answer)"),
) -> None:
    """Write report.html (plots embedded, no network needed) and the PNGs beside it."""
    if not db.exists():
        raise HtxError(f"No results in {db}. Run `htx run CONFIG` first.")
    with Store(db) as store:
        if run_id == "latest":
            latest = store.latest_run_id()
            if latest is None:
                raise HtxError(f"No runs in {db}. Run `htx run CONFIG` first.")
            run_id = latest
        rep = build_report(store, run_id, out_dir or Path("reports") / run_id, trial)
    o = out()
    o.print(f"wrote {rep.path} ({len(rep.images)} plots: {', '.join(rep.images)})", highlight=False)
    for note in rep.notes:
        o.print(f"note: {note}", highlight=False)
