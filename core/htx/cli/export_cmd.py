"""``htx export RUN/TRIAL --out PATH``: the deployable model of a stored trial, without searching again.

The trial's stored assignment (its FP32 ops as portable keys and as the unit's names) is applied to the
trial's surgery on its compute unit, or with ``--compute`` on another unit through the portable keys, and
written by that unit's ``export`` (the Core ML unit writes a typed ``.mlpackage``). A unit that cannot
export says so.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import typer

from htx.config import DEFAULT_DB
from htx.console import err, handle_errors, out
from htx.errors import HtxError, UnavailableError
from htx.grid import make_spec
from htx.identity import transfer
from htx.nan_sources import open_trial
from htx.plugins import load_registry
from htx.separator import parse_entry
from htx.types import Assignment

#: The unit that writes each deployable format, chosen by ``--out``'s suffix when ``--compute`` is not given.
SUFFIX_UNITS = {".onnx": "onnx", ".mlpackage": "coreml", ".aimodel": "coreai"}
#: ``--format`` names the format; it picks the unit as the suffix does.
FORMATS = {"mlpackage": "coreml", "onnx": "onnx", "aimodel": "coreai"}


def check_out_path(out_path: Path) -> None:
    """Refuse an --out that cannot be written, naming the path and why, before any model is built."""
    parent = out_path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise HtxError(f"cannot write {out_path}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HtxError(f"cannot write {out_path}: {parent} is read-only; choose another --out")


@handle_errors
def export(
    ref: str = typer.Argument(..., help="RUN_ID/TRIAL_ID of a stored trial (trial ids: `htx leaderboard --format csv`)"),
    out_path: Path = typer.Option(..., "--out", help="where to write the model: model.mlpackage (Core ML) or model.onnx (ONNX)"),
    compute: str = typer.Option(None, "--compute", help="export through another compute unit, e.g. coreml or '{coreml: {target: iOS17}}' (default: the trial's unit, or the unit --out's suffix names)"),
    fmt: str = typer.Option(None, "--format", help="mlpackage (Core ML), onnx or aimodel (Core AI): the unit that writes it (default: from --out's suffix)"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="results database"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
) -> None:
    """Write the deployable model of a stored trial: its surgery and its stored precision assignment."""
    if out_path.exists() and not force:
        raise HtxError(f"{out_path} exists; pass --force to overwrite it or choose another --out")
    check_out_path(out_path)
    e = err()
    builder, spec, record, run_id, trial_id = open_trial(db, ref, load_registry(),
                                                         lambda m: e.print(m, markup=False, highlight=False))
    if record is None or record.status != "ok":
        raise HtxError(f"trial {trial_id} of run {run_id} has no ok result to export "
                       f"({'not run yet' if record is None else record.status + ': ' + str(record.reason)})")
    stored = record.info.get("assignment")
    if not stored:
        raise HtxError(f"trial {trial_id} was recorded before htx stored assignments; run it again "
                       f"(`htx run --resume {run_id} --retry-failed` does not re-run ok trials: start a new run)")
    t0 = time.perf_counter()
    source = builder.prepared(spec)
    target_spec = spec
    if fmt is not None and fmt not in FORMATS:
        raise HtxError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    by_suffix = FORMATS[fmt] if fmt is not None else SUFFIX_UNITS.get(out_path.suffix)
    if compute is None and by_suffix is not None and spec.compute.name != by_suffix:
        compute = by_suffix
        e.print(f"{'--format ' + fmt if fmt else '--out ' + out_path.name}: exporting through the {by_suffix} unit "
                "(pass --compute to choose another)", highlight=False)
    if compute is not None:
        entries = {**dict(zip(spec.axes, spec.entries)), "compute": parse_entry(compute, "compute")}
        target_spec = make_spec(entries, spec.idx, spec.fixture_index, builder.cfg.fixtures[spec.fixture_index])
    target = builder.prepared(target_spec)
    if target is source:
        names = set(stored["fp32_names"])
        unknown = names - {op.name for op in source.ops}
        if unknown:
            raise HtxError(f"the stored assignment names {len(unknown)} op(s) this unit no longer has "
                           f"(e.g. {sorted(unknown)[0]}): the model, surgery or htx version changed; run the trial again")
        assignment = Assignment.keep_fp32(source.ops, names)
        how = f"the stored assignment ({len(names)} FP32 ops)"
    else:
        moved = transfer(source.ops, stored["fp32_keys"], target.ops)
        assignment = moved.assignment
        s = moved.summary()
        how = (f"the stored assignment moved through portable keys ({s['exact']} ops by key, {s['by_type']} by "
               f"module and type, {s['by_module']} by module, {s['unmatched']} unmatched left FP16)")
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    try:
        path = target.compute.export(target.prepared, assignment, out_path)
    except UnavailableError as exc:
        raise HtxError(f"{exc}; pass --compute UNIT to export the stored assignment through a unit that can") from None
    except OSError as exc:
        raise HtxError(f"cannot write {out_path}: {exc.strerror or exc}; choose another --out") from None
    o = out()
    n_fp16 = len(assignment.fp16)
    n = sum(op.compute for op in target.ops)
    o.print(f"wrote {path} in {time.perf_counter() - t0:.1f} s: trial {trial_id} of run {run_id}, "
            f"{target_spec.surgery.key()} on {target.compute.label}", highlight=False, markup=False)
    o.print(f"{n_fp16} of {n} compute ops in FP16, from {how}", highlight=False, markup=False)
