"""``htx nan-sources RUN/TRIAL``: which ops are the first to go NaN/Inf under a trial's assignment."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import JustifyMethod
from rich.table import Table

from htx.config import DEFAULT_DB
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.nan_sources import (
    find_nan_sources,
    non_finite_ops,
    open_trial,
    record_segments,
    trial_assignment,
)
from htx.plugins import load_registry
from htx.trial import trial_label


@handle_errors
def nan_sources(
    ref: str = typer.Argument(..., metavar="RUN/TRIAL", help="run id and trial id, e.g. 20260101-120000-abc123/1a2b3c4d5e6f"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    segment: int = typer.Option(None, "--segment", help="record only this segment (0-based); default: scan until one goes non-finite"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Re-run one trial's assignment with per-op recording and list the ops where NaN/Inf are born.

    A source is an op whose output holds NaN or Inf while all its inputs are finite; the ops after it
    only propagate the damage.
    """
    if fmt not in ("table", "json"):
        raise HtxError(f"unknown --format {fmt!r}: use table or json")
    e = err()
    builder, spec, record, run_id, trial_id = open_trial(db, ref, load_registry(),
                                                         lambda m: e.print(m, markup=False, highlight=False))
    builder.workspace.load()
    prep = builder.prepared(spec)
    assignment, how = trial_assignment(builder, spec, record)
    segments = record_segments(builder, spec, assignment, segment)
    last = segments[-1]
    ops = prep.ops
    sources = find_nan_sources(last.stats, ops, assignment)
    bad = non_finite_ops(last.stats, ops)
    n_fp16 = sum(op.name in assignment.fp16 for op in ops if op.compute)
    n_compute = sum(op.compute for op in ops)
    if fmt == "json":
        typer.echo(json.dumps({
            "run": run_id, "trial": trial_id, "fixture": last.fixture, "segment": last.segment,
            "n_segments": last.n_segments, "segments_recorded": [s.segment for s in segments],
            "assignment": {"source": how, "fp16_ops": n_fp16, "compute_ops": n_compute},
            "non_finite_ops": len(bad),
            "sources": [s.__dict__ | {"precision": "fp16" if s.fp16 else "fp32"} for s in sources],
        }, indent=2))
        return
    o = out()
    o.print(f"trial {trial_id} of run {run_id}: {trial_label(spec)}", highlight=False, markup=False)
    o.print(f"assignment: {n_fp16} of {n_compute} compute ops FP16 ({how})", highlight=False, markup=False)
    recorded = ", ".join(str(s.segment) for s in segments)
    o.print(f"recorded segment(s) {recorded} of fixture {last.fixture} (segments 0..{last.n_segments - 1}; {prep.compute.runtime})",
            highlight=False, markup=False)
    if not bad:
        o.print(f"no op produced NaN/Inf in the recorded segment(s) of {last.fixture}.", highlight=False, markup=False)
        return
    o.print(f"segment {last.segment}: {len(bad)} of {len(ops)} ops have NaN/Inf outputs; "
            f"{len(sources)} source(s) (output non-finite, inputs finite):", highlight=False, markup=False)
    table = Table(show_lines=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"), ("op", "left"), ("portable key (module|type|ordinal)", "left"), ("precision", "left"), ("NaN", "right"),
        ("Inf", "right"), ("max |input|", "right"), ("max |output| (finite)", "right"))
    for col, just in columns:
        table.add_column(col, justify=just, no_wrap=True)
    for s in sources:
        table.add_row(str(s.position), s.name, s.key, "fp16" if s.fp16 else "fp32", str(s.nan), str(s.inf),
                      f"{s.max_abs_input:.6g}", f"{s.max_abs:.6g}")
    o.print(table)
