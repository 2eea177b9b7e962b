"""``htx show RUN_ID``: one run's details: config, model, trial counts, failures and the table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from htx.axes import axis_names
from htx.config import DEFAULT_DB
from htx.console import handle_errors, out
from htx.errors import HtxError
from htx.leaderboard import collect, rich_table
from htx.results import stored_search
from htx.store import Store, TrialRecord
from htx.trial import trial_label


@handle_errors
def show(
    run_id: str = typer.Argument(..., help="run id (see `htx leaderboard --all`), or 'latest'"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    trial: str = typer.Option(None, "--trial", help="show this trial in full: its metrics, info and, if it failed, the stored traceback"),
) -> None:
    """Show one run: its config, model, status counts, failure reasons, searches and leaderboard (or one trial)."""
    if not db.exists():
        raise HtxError(f"No results in {db}. Run `htx run CONFIG` first.")
    o = out()
    with Store(db) as store:
        if run_id == "latest":
            run_id = store.latest_run_id() or run_id
        run = store.get_run(run_id)
        rows = collect(store, run=run_id)
        trials = {t.trial_id: t for t in store.trials([run_id])}
    cfg = json.loads(run["config_json"])
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))
    o.print(f"[bold]run {escape(run_id)}[/bold]  {escape(str(run['name']))}  status={run['status']}  created {created}  host={run['host']}  htx {run['htx_version']}", highlight=False)
    if run.get("status_note"):
        o.print(f"[yellow]status {run['status']}: {escape(run['status_note'])}[/yellow]", highlight=False)
    o.print(f"config: {run['config_path'] or '(stored)'}", highlight=False, markup=False)
    o.print(f"model: {run['model_source']} (hash {run['model_hash']})", highlight=False, markup=False)
    o.print("axes: " + "; ".join(f"{a}: {', '.join(_entry(e) for e in cfg.get(a, []))}" for a in axis_names()), highlight=False, markup=False)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    o.print("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), highlight=False)
    for r in rows:
        if r["status"] != "ok":
            combo = " x ".join(str(r[a]) for a in (*axis_names(), "fixture"))
            # escaped: entry keys (torch[device='cuda']) and reasons hold brackets rich would read as markup
            o.print(f"  [red]{r['status']}[/red] {r['trial']} {escape(combo)}: {escape(str(r['reason']))}", highlight=False)
    if trial is not None:
        show_trial(o, run_id, trials, trial)
        return
    seen: set[tuple[str, ...]] = set()
    for t in sorted(trials.values(), key=lambda t: t.idx):  # every search: one per combination, not per label
        search = stored_search(t.info.get("search"))
        key = (t.surgery, t.precision, t.compute, search.log_path or t.stft) if search is not None else ()
        if search is None or key in seen:
            continue
        seen.add(key)
        facts = "; ".join([f"criterion {search.criterion or '?'}", f"{_n(search.evaluations)} evaluations",
                           *(f"{k} {v}" for k, v in search.facts.items())])
        o.print(f"  search {t.precision} on {t.compute} ({t.surgery}): {_n(search.n_fp32)} FP32 ops; {search.status}; {facts}",
                highlight=False, markup=False)
        if search.frontier:
            o.print("  frontier (quality bar -> cheapest verified set):", highlight=False)
            for f in search.frontier:
                snr = "" if f["snr_db"] is None else f"{f['snr_db']:.1f} dB"
                cost = "" if f["cost"] is None else f", cost {f['cost']:g}"
                o.print(f"    snr >= {f['snr_db_bar']:g} dB: {'passed' if f['passed'] else 'not reached'}, "
                        f"{_n(f['fp32_ops'])} FP32 ops, {_n(f['partitions'])} partitions{cost}, {snr} "
                        f"({f['status']})", highlight=False, markup=False)
    o.print(rich_table(rows, title=f"run {run_id}"))


def _entry(e: dict) -> str:
    if not e.get("params"):
        return e["name"]
    return f"{e['name']}{e['params']}"


def _n(v: Any) -> str:
    return "?" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def show_trial(o: Any, run_id: str, trials: dict[str, TrialRecord], trial_id: str) -> None:
    """One trial in full; a failed trial's stored traceback (what a plugin raised) is printed last."""
    t = trials.get(trial_id)
    if t is None:
        known = ", ".join(sorted(trials)[:6])
        raise HtxError(f"run {run_id} has no trial {trial_id!r}; its trials: {known}{' ...' if len(trials) > 6 else ''}")
    o.print(f"trial {t.trial_id}: {trial_label(t)}", highlight=False, markup=False)
    o.print(f"status {t.status}" + (f": {t.reason}" if t.reason else ""), highlight=False, markup=False)
    for k, v in sorted(t.metrics.items()):
        o.print(f"  {k} = {v}", highlight=False, markup=False)
    info = {k: v for k, v in t.info.items() if k not in ("traceback", "search")}
    for k, v in sorted(info.items()):
        text = json.dumps(v, default=str)
        o.print(f"  info.{k} = {text if len(text) <= 200 else text[:199] + '…'}", highlight=False, markup=False)
    tb = t.info.get("traceback")
    if isinstance(tb, str) and tb:
        o.print("stored traceback (where the trial failed):", highlight=False)
        o.print(tb.rstrip(), highlight=False, markup=False)
    elif t.status == "failed":
        o.print("no traceback stored for this trial", highlight=False)
