"""``htx run CONFIG``: expand the grid, run every trial, record it, show the leaderboard.

Exit codes: 0 when every trial is ok or unavailable; 1 when a trial failed (and, with ``--check``, when a
trial misses the targets); 2 for a usage error (bad config, flags or paths: nothing ran); 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from htx.config import DEFAULT_DB, EXECUTOR_KINDS, executor_override, load_config, parse_config
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.leaderboard import collect, misses
from htx.plugins import load_registry
from htx.report import build_report
from htx.run import Run
from htx.store import Store, StoreWriteError
from htx.summary import summary_table


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


@handle_errors(code=2)
def run(
    config: Path = typer.Argument(None, help="experiment config (YAML); optional with --resume"),
    resume: str = typer.Option(None, "--resume", help="continue RUN_ID, skipping its finished trials"),
    db: Path = typer.Option(None, "--db", help="results database (default: the config's store.path)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar (logs only)"),
    executor: str = typer.Option(None, "--executor", help="serial | local | ray (overrides the config's `executor:`)"),
    workers: int = typer.Option(None, "--workers", min=1, help="worker processes of the local executor (implies --executor local)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="with --resume: run the run's failed trials again"),
    check: bool = typer.Option(False, "--check", help="exit 1 when any trial misses the targets (a CI precision gate)"),
    report: Path = typer.Option(None, "--report", help="also write the HTML report (plots, precision map) to this folder"),
) -> None:
    """Run an experiment grid against the FP32 reference and show the leaderboard."""
    registry = load_registry()
    if config is None and resume is None:
        raise HtxError("give a CONFIG to run, or --resume RUN_ID to continue a run")
    if retry_failed and resume is None:
        raise HtxError("--retry-failed re-runs the failed trials of a run: give --resume RUN_ID too")
    if executor is not None and executor not in EXECUTOR_KINDS:
        raise HtxError(f"--executor {executor!r}: use one of {', '.join(EXECUTOR_KINDS)}")
    override = executor_override(executor, workers) if executor or workers else None
    if config is not None:
        cfg = load_config(config, registry, override)
    else:
        with Store(db or DEFAULT_DB) as s:
            cfg = parse_config(json.loads(s.get_run(resume)["config_json"]), f"run {resume}", registry, override)
    store_path = db or Path(cfg.store.path)
    e = err()
    t0 = time.perf_counter()
    with Store(store_path) as store:
        progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), console=e, transient=False, disable=no_progress,
        )
        task = progress.add_task("", total=None)

        def on_progress(desc: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=desc[-90:])

        def on_message(msg: str) -> None:
            (progress.console if not no_progress else e).print(msg, highlight=False, markup=False)

        run_ = Run(cfg, registry, store, str(config) if config else None, on_progress, on_message)
        previous = signal.signal(signal.SIGTERM, _sigterm)  # a `kill` is an interruption, as Ctrl-C is
        try:
            with progress:
                run_id = run_.execute(resume=resume, retry_failed=retry_failed)
        except StoreWriteError as exc:  # not a usage error: the run failed, and can be resumed
            e.print(Text.assemble(("Error:", "red"), f" {exc}: htx run --resume {run_.run_id} --db {store_path}"),
                    highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            by = " by SIGTERM" if str(exc) == "SIGTERM" else ""
            e.print(f"\n[yellow]Interrupted{by}.[/yellow] Finished trials are saved. Continue with: "
                    f"htx run --resume {run_.run_id} --db {store_path}")
            raise typer.Exit(143 if by else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        rows = collect(store, run=run_id)
        o = out()
        o.print(summary_table(rows, title=f"htx leaderboard: {cfg.name} (run {run_id})"))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        e.print(f"run {run_id}: {summary} in {time.perf_counter() - t0:.1f} s; results in {store_path}", highlight=False)
        if report is not None:
            rep = build_report(store, run_id, report)
            e.print(f"report: {rep.path}", highlight=False)
        else:
            e.print(f"see it: htx report {run_id} --db {store_path} --out reports/{run_id}", highlight=False)
    if counts.get("failed"):
        raise typer.Exit(1)
    if check:
        missed = misses(rows)
        if missed:
            e.print(f"check: {len(missed)} of {len(rows)} trials miss the targets (htx leaderboard --db {store_path} "
                    f"--run {run_id} shows which)", highlight=False)
            raise typer.Exit(1)
