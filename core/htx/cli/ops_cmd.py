"""``htx ops RUN_ID/TRIAL_ID``: per-op max |x|, NaN and Inf of one recorded pass of a stored trial.

The trial is rebuilt from the run's stored config (same model, surgery, compute unit and assignment) and
one recording pass runs on the first segment of its fixture. The first op in program order
whose output is non-finite while its inputs are finite is where NaN/Inf start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import JustifyMethod
from rich.table import Table

from htx.config import DEFAULT_DB
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.nan_sources import find_nan_sources, non_finite_ops, rebuild_trial, trial_assignment
from htx.plugins import load_registry
from htx.store import Store
from htx.trial import trial_label
from htx.types import OpStats


@handle_errors
def ops(
    trial: str = typer.Argument(..., help="RUN_ID/TRIAL_ID; RUN_ID alone lists the run's trials ('latest' for the latest run)"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    nonfinite: bool = typer.Option(False, "--nonfinite", help="only ops whose output has NaN or Inf"),
    top: int = typer.Option(0, "--top", help="only the N ops with the largest max |x| (0: all)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Re-run one recording pass of a stored trial and show every op's max |x|, NaN and Inf counts."""
    if fmt not in ("table", "json"):
        raise HtxError(f"unknown --format {fmt!r}: use table or json")
    if not db.exists():
        raise HtxError(f"No results in {db}. Run `htx run CONFIG` first.")
    run_id, _, trial_id = trial.partition("/")
    with Store(db) as store:
        if run_id == "latest":
            run_id = store.latest_run_id() or run_id
        store.get_run(run_id)  # an unknown run: a clear error before anything else
        all_recs = store.trials([run_id])
    recs = [t for t in all_recs if t.trial_id == trial_id]
    if not recs:
        o = out()
        if trial_id:
            o.print(f"run {run_id} has no trial {trial_id!r}.", highlight=False)
        o.print(f"Trials of run {run_id} (pass one as `htx ops {run_id}/TRIAL_ID`):", highlight=False)
        for t in sorted(all_recs, key=lambda t: t.idx):
            o.print(f"  {t.trial_id}  {t.status:<11} {trial_label(t)}",
                    highlight=False, markup=False)
        if trial_id:
            raise typer.Exit(1)
        return
    registry = load_registry()
    rec = recs[0]
    e = err()
    with Store(db) as store:
        builder, spec, _ = rebuild_trial(store, run_id, trial_id, registry, lambda m: e.print(m, highlight=False, markup=False))
        builder.workspace.load()
        prep = builder.prepared(spec)
        assignment, source = trial_assignment(builder, spec, rec)
        fx = builder.workspace.fixtures.get(spec.fixture_index)
        usable = fx is not None and fx.ok
        # record on the trial's own fixture (the first usable one when it has none)
        stats = builder.session(spec, prep).record(assignment, fixture_index=spec.fixture_index if usable else None)
    rows: list[dict[str, Any]] = []
    for op in prep.ops:
        st: OpStats | None = stats.get(op.name)
        if st is None:
            continue
        rows.append({
            "op": op.name, "key": op.key, "module": op.module, "type": op.type, "dtype": "fp16" if assignment.is_fp16(op.name) else "fp32",
            "max_abs": st.max_abs, "nan": st.nan, "inf": st.inf, "max_abs_input": st.max_abs_input,
            "inputs_finite": st.inputs_finite, "reduction_size": st.reduction_size,
        })
    sources = find_nan_sources(stats, prep.ops)
    source_op = next(r for r in rows if r["op"] == sources[0].name) if sources else None
    shown = [r for r in rows if r["nan"] or r["inf"]] if nonfinite else rows
    if top:
        shown = sorted(shown, key=lambda r: -r["max_abs"])[:top]
    if fmt == "json":
        typer.echo(json.dumps({"run": run_id, "trial": trial_id, "runtime": prep.compute.runtime, "assignment": source,
                               "first_nonfinite": source_op["op"] if source_op else None, "ops": shown}, indent=1))
        return
    o = out()
    o.print(f"trial {trial_id} of run {run_id}: {trial_label(rec)}", highlight=False, markup=False)
    o.print(f"recorded on {prep.compute.runtime} with the assignment from {source}: "
            f"{len(assignment.fp16)} of {sum(op.compute for op in prep.ops)} compute ops in FP16", highlight=False, markup=False)
    table = Table(show_lines=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("op", "left"), ("module", "left"), ("type", "left"), ("dtype", "left"), ("max |x|", "right"), ("NaN", "right"),
        ("Inf", "right"), ("max |in|", "right"), ("reduce", "right"))
    for col, just in columns:
        table.add_column(col, justify=just)
    for r in shown:
        bad = r["nan"] or r["inf"]
        table.add_row(
            r["op"], r["module"] or "(model)", r["type"], r["dtype"], _fmt(r["max_abs"]), str(r["nan"]), str(r["inf"]),
            _fmt(r["max_abs_input"]) + ("" if r["inputs_finite"] else " (non-finite)"),
            str(r["reduction_size"] or ""), style="red" if bad else ("yellow" if r["max_abs"] > 65504 else None),
        )
    o.print(table)
    n_bad = len(non_finite_ops(stats, prep.ops))
    o.print(f"{len(rows)} ops recorded; {n_bad} with NaN/Inf output; "
            f"max |x| above 65504 (FP16 overflow): {sum(r['max_abs'] > 65504 for r in rows)}", highlight=False)
    if source_op:
        o.print(f"first non-finite output from finite inputs: {source_op['op']} ({source_op['type']}, {source_op['dtype']})", highlight=False)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"
