"""``htx bench search``: one bisect search vs a linear one-op-at-a-time scan, per model."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import typer

from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx_plugins.precision.bench import MODELS, bench_model


def _s(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


@handle_errors
def bench_search(
    models: str = typer.Option("demo,full", "--models", help="comma-separated: demo, full (HTDemucs defaults, random init)"),
    criterion: str = typer.Option("finite", "--criterion", help="bisect criterion: finite, within_tol, targets or 'snr_db >= X'"),
    device: str = typer.Option("cpu", "--device", help="torch compute unit device: cpu, cuda, mps, auto"),
    max_seconds: float = typer.Option(600.0, "--max-seconds", help="stop a search after this long and project the rest"),
    out_path: Path = typer.Option(None, "--out", help="also write the rows as JSON (e.g. experiments/benchmarks/search.json)"),
) -> None:
    """Wall time and evaluations of one bisect search (planted faults) next to a linear scan's n evaluations."""
    keys = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise HtxError(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    e = err()
    rows = []
    for key in keys:
        rows.append(bench_model(key, criterion, device, max_seconds, say=lambda m: e.print(m, markup=False, highlight=False)))
    from rich.table import Table

    table = Table(title=f"bisect vs linear scan (planted-faults, criterion {criterion}, torch:{device}, one {rows[0]['segment_s']:g} s segment)")
    for col in ("model", "ops n", "planted k", "bisect evals", "bound", "bisect s", "s / eval", "linear evals", "linear s (est.)", "evals ratio", "found planted"):
        table.add_column(col, justify="left" if col in ("model",) else "right")
    for r in rows:
        if r["finished"]:
            evals, secs, found = str(r["evaluations"]), _s(r["search_s"]), "yes" if r["found_planted_exactly"] else "NO"
            ratio = f"{r['n_ops'] / r['evaluations']:.1f}x"
        else:
            evals = f"{r['evaluations_projected']} (projected; {r['evaluations_measured']} run)"
            secs = f"{_s(r['search_s_projected'])} (projected)"
            ratio, found = f"{r['n_ops'] / r['evaluations_projected']:.1f}x", "not finished"
        table.add_row(r["model"], str(r["n_ops"]), str(r["planted_k"]), evals, str(r["evaluations_bound"]), secs,
                      _s(r["eval_s_median"]), str(r["linear_scan_evaluations"]), _s(r["linear_scan_s_estimated"]), ratio, found)
    table.caption = ("linear s (est.) = n x median measured evaluation time (a linear scan is not run); "
                     "projected = evaluations bisect needs with the planted oracle x median evaluation time")
    out().print(table)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Rows of models not benchmarked now are kept, so models can be measured in separate invocations.
        kept = []
        if out_path.exists():
            try:
                kept = [r for r in json.loads(out_path.read_text()).get("rows", []) if r.get("model") not in keys]
            except (json.JSONDecodeError, AttributeError):
                kept = []
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for r in rows:
            r.update({"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(), "measured_at": stamp})
        record = {"benchmark": "search", "command": "htx bench search", "rows": kept + rows}
        out_path.write_text(json.dumps(record, indent=1, default=str))
        e.print(f"wrote {out_path}", highlight=False)
