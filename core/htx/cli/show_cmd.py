"""``htx show RUN_ID``: one run's details: config, model, trial counts, failures and the table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from htx.axes import axis_names
from htx.config import DEFAULT_DB
from htx.console import handle_errors, out
from htx.errors import HtxError
from htx.leaderboard import collect, rich_table
from htx.store import Store


@handle_errors
def show(
    run_id: str = typer.Argument(..., help="run id (see `htx leaderboard --all`), or 'latest'"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
) -> None:
    """Show one run: its config, model, status counts, failure reasons and leaderboard."""
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
    o.print(f"[bold]run {run_id}[/bold]  {run['name']}  status={run['status']}  created {created}  host={run['host']}  htx {run['htx_version']}", highlight=False)
    o.print(f"config: {run['config_path'] or '(stored)'}", highlight=False)
    o.print(f"model: {run['model_source']} (hash {run['model_hash']})", highlight=False)
    o.print("axes: " + "; ".join(f"{a}: {', '.join(_entry(e) for e in cfg.get(a, []))}" for a in axis_names()), highlight=False)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    o.print("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), highlight=False)
    for r in rows:
        if r["status"] != "ok":
            combo = " x ".join(str(r[a]) for a in (*axis_names(), "fixture"))
            o.print(f"  [red]{r['status']}[/red] {r['trial']} {combo}: {r['reason']}", highlight=False)
    seen: set[str] = set()
    for t in trials.values():
        search = t.info.get("search")
        if not search or t.precision in seen:
            continue
        seen.add(t.precision)
        summary = {k: search.get(k) for k in ("status", "criterion", "evaluations", "rank_method", "cost_kind", "cost", "partitions") if k in search}
        n_fp32 = len(search.get("fp32_ops", []))
        o.print(f"  search {t.precision} on {t.compute}: {n_fp32} FP32 ops; {summary}", highlight=False, markup=False)
        if search.get("frontier"):
            o.print("  frontier (quality bar -> cheapest verified set):", highlight=False)
            for f in search["frontier"]:
                snr = "" if f.get("snr_db") is None else f"{f['snr_db']:.1f} dB"
                o.print(f"    snr >= {f['snr_db_bar']:g} dB: {'passed' if f['passed'] else 'not reached'}, "
                        f"{f['fp32_ops']} FP32 ops, {f.get('partitions', '?')} partitions, cost {f['cost']:g}, {snr} "
                        f"({f['status']})", highlight=False, markup=False)
    o.print(rich_table(rows, title=f"run {run_id}"))


def _entry(e: dict) -> str:
    if not e.get("params"):
        return e["name"]
    return f"{e['name']}{e['params']}"
