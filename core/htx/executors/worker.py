"""What runs inside a worker process (local pool or Ray task): rebuild the run once, then run chunks.

A worker keeps one workspace and trial builder per run in memory, so the model, fixtures, references,
prepared models and precision assignments it built for one chunk serve every later chunk it gets. The
references come from the driver (its on-disk cache, or Ray's object store), never recomputed here.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

from htx.builder import TrialBuilder
from htx.config import parse_config
from htx.errors import HtxError
from htx.executors.plan import RunPayload
from htx.failures import describe_failure
from htx.grid import TrialSpec
from htx.plugins import load_registry
from htx.trial import new_record, run_trial
from htx.workspace import SharedData, Workspace

#: (payload key, builder) of the run this process last worked on.
_CURRENT: tuple[str, TrialBuilder] | None = None
#: How long this process took to build its run (seconds), and when it was ready (``time.time()``).
_SETUP: dict[str, float] = {}
#: Where this worker's log lines go (the local pool streams them to the driver); ``None``: dropped.
_SAY: list[Any] = [None]


def set_messages(say: Any) -> None:
    """Send this worker's log lines (model loading, search progress) to ``say``."""
    _SAY[0] = say


def _say(msg: str) -> None:
    if _SAY[0] is not None:
        _SAY[0](msg)


def worker_name() -> str:
    return f"{platform.node()}:{os.getpid()}"


def builder_for(payload: RunPayload) -> TrialBuilder:
    """This process's trial builder for the payload's run, built on first use."""
    global _CURRENT
    if _CURRENT is not None and _CURRENT[0] == payload.key:
        return _CURRENT[1]
    _CURRENT = None  # drop the previous run's models before building this one
    t0 = time.perf_counter()
    for path in payload.sys_path:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    extras = tuple(importlib.import_module(name) for name in payload.plugin_modules)
    registry = load_registry(extra_plugins=extras)
    # The driver validated the config and checked the surgeries against the model it built; the worker
    # does not read the checkpoint twice.
    cfg = parse_config(payload.config, f"run {payload.run_id}", registry, check_model=False, check_files=False)
    workspace = Workspace(cfg, registry, _say, check_surgeries=False, announce_setup=False)
    if workspace.model.hash != payload.model_hash:
        raise HtxError(
            f"the worker built model {workspace.model.hash}, the driver {payload.model_hash} "
            "(a different checkpoint file or demucs/torch version on this node)"
        )
    builder = TrialBuilder(workspace, registry, payload.run_id)
    _CURRENT = (payload.key, builder)
    _SETUP.update(setup_s=time.perf_counter() - t0, ready_at=time.time())
    return builder


def worker_stats(builder: TrialBuilder | None) -> dict[str, Any]:
    return {
        "worker": worker_name(),
        "references_computed": builder.workspace.references_computed if builder else 0,
        "prepared": builder.n_prepared if builder else 0,
        **_SETUP,
    }


def run_chunk(payload: RunPayload, specs: tuple[TrialSpec, ...], shared: SharedData | None = None) -> Iterator[tuple[Any, ...]]:
    """Run one chunk: ``("begin",)``, then ``("start", trial_id)`` before and ``("record", rec, stats)`` after each trial.

    The driver learns which trial is running from ``start``: if this process dies, that trial is the one
    that killed it. A worker that cannot build the run records every trial of the chunk as failed.
    """
    yield ("begin",)
    try:
        builder = builder_for(payload)
        if shared is not None:
            builder.workspace.shared = shared
        builder.workspace.load(only={spec.fixture_index for spec in specs})
    except Exception as exc:
        reason = f"worker {worker_name()} could not set up the run: {describe_failure(exc)}"
        for spec in specs:
            yield ("record", new_record(payload.run_id, spec, "failed", reason), worker_stats(None))
        return
    for spec in specs:
        yield ("start", spec.trial_id)
        rec = run_trial(builder, spec)
        rec.info["worker"] = worker_name()
        yield ("record", rec, worker_stats(builder))
