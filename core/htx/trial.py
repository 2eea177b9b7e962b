"""One trial: build its pipeline, measure it on its fixture, and turn the outcome into a record.

A trial that raises, times out (``trial_timeout_s``), runs out of memory or produces non-finite output
becomes a ``failed`` record with its reason; a plugin that cannot run here gives an ``unavailable`` one.
Nothing here writes the store: the run's driver does (:mod:`htx.run`).
"""

from __future__ import annotations

import math
import time
import traceback

import torch

from htx.builder import TrialBuilder
from htx.calls import call_plugin
from htx.errors import UnavailableError
from htx.failures import deadline, describe_failure
from htx.grid import TrialSpec
from htx.identity import stored_assignment
from htx.measure import measure
from htx.results import check_placement
from htx.store import TrialRecord


def new_record(run_id: str, spec: TrialSpec, status: str = "failed", reason: str | None = None) -> TrialRecord:
    """The record of ``spec`` before it runs (executors also use it for trials whose worker died)."""
    return TrialRecord(
        run_id=run_id, trial_id=spec.trial_id, idx=spec.idx, axes=spec.keys(), fixture=spec.fixture,
        status=status, reason=reason, started_at=time.time(),
    )


def trial_label(trial: TrialSpec | TrialRecord) -> str:
    """``surgery x precision x stft x compute x fixture`` for progress and log lines."""
    keys = trial.keys() if isinstance(trial, TrialSpec) else trial.axes
    return " x ".join([*keys.values(), trial.fixture])


def run_trial(builder: TrialBuilder, spec: TrialSpec) -> TrialRecord:
    """Run one trial; never raises except for ``KeyboardInterrupt``."""
    rec = new_record(builder.run_id or "", spec)
    t0 = time.perf_counter()
    try:
        _run(builder, spec, rec)
    except UnavailableError as exc:
        rec.status, rec.reason = "unavailable", f"unavailable: {exc}"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        rec.status, rec.reason = "failed", describe_failure(exc)
        rec.info["traceback"] = traceback.format_exc(limit=8)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rec.finished_at = time.time()
    rec.duration_s = time.perf_counter() - t0
    return rec


def _run(builder: TrialBuilder, spec: TrialSpec, rec: TrialRecord) -> None:
    ws, cfg = builder.workspace, builder.cfg
    fixture, reference = ws.fixture_and_reference(spec.fixture_index)
    prep = builder.prepared(spec)
    rec.runtime = prep.compute.runtime
    rec.info["low_precision"] = prep.compute.low_precision  # what "fp16" means in this row
    rec.info["emulated"] = bool(prep.compute.emulated)
    stft = builder.stft(spec.stft, prep.surgery)
    if stft is None:
        rec.info["stft"] = "not used by this surgery"
    else:
        rec.info["stft_emulated"] = bool(stft.emulated)
    ainfo = builder.assignment(spec)
    assignment = ainfo.assignment
    if ainfo.search.get("interrupted"):  # Ctrl-C in the search: keep its best verified set, measure nothing more
        final = ainfo.search.get("final") or {}
        rec.status = "interrupted"
        rec.reason = (f"search interrupted (Ctrl-C) after {ainfo.evaluations} evaluations; kept its best verified set "
                      f"({sum(op.compute for op in prep.ops) - len(assignment.fp16)} FP32 ops); --resume runs it again")
        rec.metrics = {k: v for k, v in final.items() if k in ("snr_db", "within_tol")}
        rec.metrics.update(evaluations=ainfo.evaluations, fp16_op_fraction=assignment.fp16_fraction(prep.ops))
        rec.info.update(search=ainfo.search, assignment=stored_assignment(assignment, prep.ops))
        return
    seg = builder.segmenting
    with deadline(cfg.trial_timeout_s, "trial"):
        pipe = builder.pipeline(prep, stft, assignment)
        m = measure(pipe, [(fixture, reference)], seg, cfg.targets.rtol, cfg.targets.atol,
                    latency=(cfg.latency.warmup, cfg.latency.repeats), sync_device=prep.compute.device)[fixture.name]
    m["fp16_op_fraction"] = assignment.fp16_fraction(prep.ops)
    m["n_ops"] = sum(op.compute for op in prep.ops)
    if ainfo.search:  # search policies show their count, 0 included (magnitude: a record pass only)
        m["evaluations"] = ainfo.evaluations
        m["search_s"] = ainfo.seconds
    placement = call_plugin(prep.compute, "placement", prep.prepared, assignment, check=check_placement)
    m.update(placement.metrics())
    rec.metrics = m
    if placement.source:
        rec.info["placement"] = placement.source  # "emulated" (from the typed program) or "device plan"
    rec.info.update(builder.assignment_info(prep, assignment))
    rec.info["assignment"] = stored_assignment(assignment, prep.ops)
    rec.info["ops_file"] = str(builder.ops_file(spec, prep))
    hop = max(1, int((1 - cfg.separation.overlap) * seg.segment_length))
    rec.info.update({"fixture_notes": fixture.notes, "segments": math.ceil(fixture.mix.shape[-1] / hop)})
    if ainfo.search:
        rec.info["search"] = ainfo.search
    if m["nan_count"] or m["inf_count"]:
        rec.status = "failed"
        rec.reason = f"non-finite output: {m['nan_count']} NaN, {m['inf_count']} Inf"
    else:
        rec.status = "ok"
