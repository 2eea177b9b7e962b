"""NaN/Inf source localization: which ops are the first to produce non-finite values.

One recorded pass (:meth:`htx.api.ComputeUnit.record`) gives per-op :class:`OpStats`. A *source* is an
op whose output holds NaN or Inf while every input it received was finite: the place where a non-finite
value is born (an FP16 overflow, a division by zero, ``sqrt`` of a negative), as opposed to the ops that
merely propagate it. :func:`find_nan_sources` is shared by ``htx nan-sources`` and the tests;
:func:`rebuild_trial` and :func:`record_segments` rebuild a stored trial and record it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htx.builder import TrialBuilder
from htx.config import parse_config
from htx.errors import HtxError
from htx.grid import TrialSpec, expand_grid
from htx.interfaces import SearchPolicy
from htx.separation import chunk_offsets
from htx.session import Session
from htx.store import Store
from htx.types import Assignment, OpInfo, OpStats


@dataclass(frozen=True)
class NanSource:
    """One op whose output went non-finite while its inputs were finite."""

    position: int  # index of the op in execution order
    name: str
    type: str
    key: str  # portable: module|type|ordinal
    fp16: bool
    nan: int
    inf: int
    max_abs_input: float
    max_abs: float  # max |output| over its finite values


def non_finite_ops(stats: dict[str, OpStats], ops: Sequence[OpInfo]) -> list[OpInfo]:
    """Ops (in execution order) whose output holds NaN or Inf."""
    return [op for op in ops if op.name in stats and not stats[op.name].finite]


def find_nan_sources(stats: dict[str, OpStats], ops: Sequence[OpInfo], assignment: Assignment | None = None) -> list[NanSource]:
    """The ops, in execution order, whose output is non-finite while all their inputs are finite."""
    fp16 = assignment.fp16 if assignment is not None else frozenset()
    out: list[NanSource] = []
    for i, op in enumerate(ops):
        st = stats.get(op.name)
        if st is None or st.finite or not st.inputs_finite:
            continue
        out.append(NanSource(i, op.name, op.type, op.key, op.name in fp16, st.nan, st.inf, st.max_abs_input, st.max_abs))
    return out


@dataclass
class SegmentRecord:
    """Per-op statistics of one recorded segment of a fixture."""

    fixture: str
    segment: int  # 0-based
    n_segments: int
    offset: int  # first sample
    stats: dict[str, OpStats]


def parse_trial_ref(ref: str) -> tuple[str, str]:
    """``RUN/TRIAL`` -> ``(run_id, trial_id)``."""
    run_id, sep, trial_id = ref.strip().rpartition("/")
    if not sep or not run_id or not trial_id:
        raise HtxError(f"expected RUN/TRIAL (e.g. 20260101-120000-abc123/1a2b3c4d5e6f), got {ref!r}; "
                       "trial ids are in `htx leaderboard --format csv` (column trial) and `htx show RUN`")
    return run_id, trial_id


def rebuild_trial(store: Any, run_id: str, trial_id: str, registry: Any,
                  on_message: Callable[[str], None] | None = None) -> tuple[TrialBuilder, TrialSpec, Any]:
    """``(builder, spec, record)`` for a stored trial: a trial builder on its run's config, its grid entry
    and its stored row."""
    run = store.get_run(run_id)
    cfg = parse_config(json.loads(run["config_json"]), f"run {run_id}", registry)
    specs = {s.trial_id: s for s in expand_grid(cfg)}
    if trial_id not in specs:
        known = ", ".join(list(specs)[:6])
        raise HtxError(f"run {run_id} has no trial {trial_id!r}; its trials: {known}{' ...' if len(specs) > 6 else ''}")
    records = {t.trial_id: t for t in store.trials([run_id])}
    builder = Session(cfg, registry, on_message, run_id).builder
    return builder, specs[trial_id], records.get(trial_id)


def open_trial(db: Path, ref: str, registry: Any, on_message: Callable[[str], None] | None = None,
               ) -> tuple[TrialBuilder, TrialSpec, Any, str, str]:
    """``(builder, spec, record, run_id, trial_id)`` for ``RUN/TRIAL`` (``latest/TRIAL`` too) in the store at ``db``."""
    if not Path(db).exists():
        raise HtxError(f"No results in {db}. Run `htx run CONFIG` first.")
    run_id, trial_id = parse_trial_ref(ref)
    with Store(db) as store:
        if run_id == "latest":
            run_id = store.latest_run_id() or run_id
        builder, spec, record = rebuild_trial(store, run_id, trial_id, registry, on_message)
    return builder, spec, record, run_id, trial_id


def trial_assignment(builder: TrialBuilder, spec: TrialSpec, record: Any) -> tuple[Assignment, str]:
    """The trial's assignment and where it came from.

    Static policies are re-applied. For search policies the FP32 set stored in the trial's search log is
    used (the search is re-run only when the log is gone).
    """
    prep = builder.prepared(spec)
    policy = builder.plugin("precision", spec.precision)
    searched = isinstance(policy, SearchPolicy)
    if searched and record is not None:
        log_path = (record.info.get("search") or {}).get("log")
        if log_path and Path(log_path).exists():
            data = json.loads(Path(log_path).read_text())
            return Assignment.keep_fp32(prep.ops, data["fp32_ops"]), f"search log {log_path}"
    info = builder.assignment(spec)
    how = f"re-ran search {policy.label} ({info.evaluations} evaluations)" if searched else f"policy {policy.label}"
    return info.assignment, how


def record_segments(builder: TrialBuilder, spec: TrialSpec, assignment: Assignment, segment: int | None = None) -> list[SegmentRecord]:
    """Record the trial's fixture segment by segment, stopping at the first with a non-finite op.

    ``segment`` (0-based) records that segment only.
    """
    ws = builder.workspace
    ws.load()
    fx = ws.fixtures[spec.fixture_index]
    if not fx.ok:
        raise HtxError(fx.reason or str(fx.error))
    fixture = fx.get()
    prep = builder.prepared(spec)
    offsets = chunk_offsets(fixture.mix.shape[-1], ws.model.segment_length, builder.cfg.separation.overlap)
    if segment is not None and not 0 <= segment < len(offsets):
        raise HtxError(f"--segment {segment}: fixture {fixture.name} has segments 0..{len(offsets) - 1}")
    todo = [segment] if segment is not None else range(len(offsets))
    records: list[SegmentRecord] = []
    for k in todo:
        try:
            stats = builder.session(spec, prep).record(assignment, fixture_index=spec.fixture_index, offset=offsets[k])
        except NotImplementedError as exc:
            raise HtxError(f"{exc}; per-op recording needs a compute unit that can record (e.g. torch)") from None
        records.append(SegmentRecord(fixture.name, k, len(offsets), offsets[k], stats))
        if any(not st.finite for st in stats.values()):
            break
    return records
