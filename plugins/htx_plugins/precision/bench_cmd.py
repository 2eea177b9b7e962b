"""``htx bench search``: one bisect search vs a linear one-op-at-a-time scan, per model."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import typer

from htx.api import HtxError, err, handle_errors, out, write_record
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
    mode: str = typer.Option("planted", "--mode", help="planted: bisect on planted faults vs a linear scan; noise: bisect and sensitivity side by side on the real model (accumulated FP16 rounding noise)"),
    fixtures: str = typer.Option("sine_440,white_noise", "--fixtures", help="--mode noise: comma-separated fixtures"),
    compute: str = typer.Option(None, "--compute", help="--mode noise: a compute entry (YAML), e.g. '{coreml: {runtime: emulated}}' (default: torch on --device)"),
    policies: str = typer.Option("bisect,sensitivity", "--policies", help="--mode noise: which searches, comma-separated (sensitivity:probe ranks by evaluations instead of gradients)"),
    sensitivity_params: str = typer.Option(None, "--sensitivity-params", help="--mode noise: more sensitivity options (YAML), e.g. '{trust_estimate_db: 6, hop_ops: 16}'"),
) -> None:
    """planted: one bisect search vs a linear scan; noise: bisect vs sensitivity on the same trial, side by side."""
    if mode == "noise":
        _noise(models, criterion, device, fixtures, compute, max_seconds, policies, out_path, sensitivity_params)
        return
    if mode != "planted":
        raise HtxError(f"--mode {mode!r}: use planted or noise")
    keys = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise HtxError(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    e = err()
    rows = []
    for key in keys:
        rows.append(bench_model(key, criterion, device, max_seconds, say=lambda m: e.print(m, markup=False, highlight=False)))
    from rich.table import Table

    table = Table(title=f"bisect vs linear scan vs sensitivity (planted-faults, criterion {criterion}, torch:{device}, one {rows[0]['segment_s']:g} s segment)")
    for col in ("model", "ops n", "planted k", "bisect evals", "bound", "bisect s", "s / eval", "linear evals", "linear s (est.)", "evals ratio", "found planted",
                "sensitivity evals", "sensitivity s", "sens. found"):
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
                      _s(r["eval_s_median"]), str(r["linear_scan_evaluations"]), _s(r["linear_scan_s_estimated"]), ratio, found,
                      str(r["sensitivity_evaluations"]), _s(r["sensitivity_s"]), "yes" if r["sensitivity_found_planted_exactly"] else "NO")
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
        write_record(out_path, {"benchmark": "search", "command": "htx bench search", "rows": kept + rows})
        e.print(f"wrote {out_path}", highlight=False)


def _minimal(row: dict) -> str:
    """'yes' (1-minimal), 'merged A->B' (1-minimal, then partitions merged), 'no' or ''."""
    merged = row.get("merged")
    if merged:
        return f"merged {merged['partitions_before']}->{merged['partitions_after']}"
    return {True: "yes", False: "no"}.get(row.get("one_minimal"), "")


def _noise(models: str, criterion: str, device: str, fixtures: str, compute: str | None, max_seconds: float,
           policies: str, out_path: Path | None, sensitivity_params: str | None = None) -> None:
    import yaml
    from rich.table import Table

    from htx_plugins.precision.bench import compare_policies

    e = err()
    crit = criterion if criterion in ("finite", "within_tol", "targets") else {"snr_db": float(criterion.split(">=")[-1])}
    rows = []
    for key in [m.strip() for m in models.split(",") if m.strip()]:
        if key not in MODELS:
            raise HtxError(f"unknown model {key!r}: use {', '.join(MODELS)}")
        rows += compare_policies(key, crit, device, [f.strip() for f in fixtures.split(",")],
                                 yaml.safe_load(compute) if compute else None, max_seconds,
                                 tuple(p.strip() for p in policies.split(",")), say=lambda m: e.print(m, markup=False, highlight=False),
                                 sensitivity_params=yaml.safe_load(sensitivity_params) if sensitivity_params else None)
    table = Table(title=f"bisect vs sensitivity on the same trial (criterion {criterion})")
    for col in ("model", "unit", "policy", "ops n", "all-FP16 dB", "evaluations", "wall s", "rank", "rank evals", "rank s",
                "FP32 ops", "partitions", "final SNR dB", "passes", "1-min"):
        table.add_column(col, justify="left" if col in ("model", "unit", "policy") else "right")
    for r in rows:
        table.add_row(r["model"], r["unit"], r["policy"], str(r["n_ops"]), _s(r["all_fp16_snr_db"]), str(r["evaluations"]),
                      _s(r["search_s"]), str(r.get("rank_method") or ""), str(r.get("rank_evaluations") or ""), _s(r.get("rank_s")), str(r["fp32_ops"]),
                      str(r.get("partitions", "")), _s(r["final_snr_db"]), "yes" if r["passes"] else "NO", _minimal(r))
    out().print(table)
    if out_path is not None:
        write_record(out_path, {"benchmark": "search-noise", "command": "htx bench search --mode noise",
                                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows})
        e.print(f"wrote {out_path}", highlight=False)
