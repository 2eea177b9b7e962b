"""What runs inside a worker process (local pool or Ray task): rebuild the run once, then run chunks.

A worker keeps one :class:`~htx.runner.Runner` per run in memory, so the model, fixtures, references,
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

from htx.config import parse_config
from htx.errors import HtxError
from htx.executors.plan import RunPayload
from htx.grid import TrialSpec
from htx.plugins import load_registry
from htx.runner import Runner, describe_failure, new_record

#: (payload key, runner) of the run this process last worked on.
_CURRENT: tuple[str, Runner] | None = None
#: How long this process took to build its runner (seconds), and when it was ready (``time.time()``).
_SETUP: dict[str, float] = {}

#: Shared data the driver already holds, as shipped through Ray's object store:
#: ``{"fixtures": {i: Fixture}, "errors": {i: reason}, "references": {i: ndarray}, "reference_errors": {i: reason}}``.
Shared = dict[str, dict[int, Any]]


def worker_name() -> str:
    return f"{platform.node()}:{os.getpid()}"


def runner_for(payload: RunPayload) -> Runner:
    """This process's runner for the payload's run, built on first use."""
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
    # The driver validated the config, model checks included; the runner's load() checks the surgeries
    # against the model it builds, so the worker does not read the checkpoint twice.
    cfg = parse_config(payload.config, f"run {payload.run_id}", registry, check_model=False)
    runner = Runner(cfg, registry, store=None)
    runner.run_id = payload.run_id
    runner.load(only=())  # the model; each chunk loads the fixtures and references it needs
    if runner.loaded.hash != payload.model_hash:
        raise HtxError(
            f"the worker built model {runner.loaded.hash}, the driver {payload.model_hash} "
            "(a different checkpoint file or demucs/torch version on this node)"
        )
    _CURRENT = (payload.key, runner)
    _SETUP.update(setup_s=time.perf_counter() - t0, ready_at=time.time())
    return runner


def worker_stats(runner: Runner | None) -> dict[str, Any]:
    return {
        "worker": worker_name(),
        "references_computed": runner.references_computed if runner else 0,
        "prepared": len(runner.prepared) if runner else 0,
        **_SETUP,
    }


def run_chunk(payload: RunPayload, specs: tuple[TrialSpec, ...], shared: Shared | None = None) -> Iterator[tuple[Any, ...]]:
    """Run one chunk: ``("begin",)``, then ``("start", trial_id)`` before and ``("record", rec, stats)`` after each trial.

    The driver learns which trial is running from ``start``: if this process dies, that trial is the one
    that killed it. A worker that cannot build the run records every trial of the chunk as failed.
    """
    yield ("begin",)
    try:
        runner = runner_for(payload)
        if shared is not None:
            runner.shared = shared
        runner.load(only={spec.fixture_index for spec in specs})
    except Exception as exc:
        reason = f"worker {worker_name()} could not set up the run: {describe_failure(exc)}"
        for spec in specs:
            yield ("record", new_record(payload.run_id, spec, "failed", reason), worker_stats(None))
        return
    for spec in specs:
        yield ("start", spec.trial_id)
        rec = runner.run_trial(spec)
        rec.info["worker"] = worker_name()
        yield ("record", rec, worker_stats(runner))
