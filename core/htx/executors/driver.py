"""The driver side of a parallel run: plan chunks, hand them to a backend, write what comes back.

The driver alone writes the store: every record a worker streams back is committed at once, in its own
transaction, so an interrupted or crashed driver loses nothing and ``htx run --resume RUN_ID`` continues.
A backend (local process pool or Ray) reports, per chunk, ``begin`` (a worker took it), ``start``
(trial id), ``record`` (a finished trial), ``done``, or ``lost`` (the worker or node died, or it was
killed). The driver turns a loss into a failed row for the trial that was running, re-submits the
chunk's other trials, and kills a chunk that stays silent longer than ``3 x trial_timeout_s +
hang_grace_s`` (a trial stuck where the in-process deadline cannot interrupt it).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from htx.executors.plan import (
    Chunk,
    RunPayload,
    make_chunks,
    shipped_plugin_modules,
    trial_resources,
    worker_config,
)
from htx.grid import TrialSpec
from htx.runner import Runner, new_record, trial_label
from htx.store import TrialRecord


@dataclass
class Event:
    """One thing a backend observed about a chunk."""

    chunk: int
    kind: str  # begin | start | record | done | lost | unavailable
    trial_id: str | None = None
    record: TrialRecord | None = None
    stats: dict[str, Any] | None = None
    reason: str | None = None

    @classmethod
    def from_worker(cls, chunk: int, msg: tuple[Any, ...]) -> Event:
        """Decode an event yielded by :func:`htx.executors.worker.run_chunk`."""
        kind = msg[0]
        if kind == "start":
            return cls(chunk, kind, trial_id=msg[1])
        if kind == "record":
            return cls(chunk, kind, trial_id=msg[1].trial_id, record=msg[1], stats=msg[2])
        return cls(chunk, kind)


class Backend(Protocol):
    """Where chunks run. ``slots`` is how many run at once (for chunk sizing)."""

    kind: str
    slots: int

    def submit(self, chunk: Chunk) -> None: ...

    def poll(self, timeout: float) -> list[Event]: ...

    def kill(self, chunk_id: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class ExecutorReport:
    """What a parallel run did, for logs, tests and ``htx bench executors``."""

    kind: str
    slots: int
    chunks: int = 0
    first_start_s: float | None = None  # from dispatch to the first trial starting in a worker
    wall_s: float = 0.0
    deaths: int = 0  # workers or nodes lost while running a chunk
    hangs: int = 0  # chunks killed for silence
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # worker name -> its latest stats

    started_at: float = 0.0  # time.time() at dispatch

    @property
    def ready_s(self) -> list[float]:
        """Per worker: seconds from dispatch until its run was built (process start, imports, model)."""
        return sorted(w["ready_at"] - self.started_at for w in self.workers.values() if "ready_at" in w)

    @property
    def setup_s(self) -> list[float]:
        """Per worker: seconds it spent building the run (registry, config, model; each chunk then loads its
        own fixtures and references)."""
        return sorted(w["setup_s"] for w in self.workers.values() if "setup_s" in w)

    @property
    def references_computed(self) -> int:
        """FP32 references the workers computed themselves (0: they all came from the driver)."""
        return sum(w["references_computed"] for w in self.workers.values())


@dataclass
class _ChunkState:
    chunk: Chunk
    active: bool = False
    last_event: float = 0.0
    current: str | None = None
    done: set[str] = field(default_factory=set)
    kill_reason: str | None = None


def prepare_once(runner: Runner, todo: list[TrialSpec]) -> None:
    """Prepare each (surgery, compute) pair once here when the unit caches its preparation on disk.

    Workers then load that conversion instead of converting the same model in parallel. Failures are
    left to the workers, whose trials record them like in a serial run.
    """
    seen: set[tuple[str, str]] = set()
    for spec in todo:
        key = (spec.surgery.key(), spec.compute.key())
        if key in seen:
            continue
        seen.add(key)
        if getattr(runner.registry.get("compute", spec.compute.name), "disk_cached_prepare", False):
            try:
                runner.prepared_for(spec)
            except Exception:
                pass
    runner.prepared.clear()  # the driver runs no trial: free the models


def shared_data(runner: Runner) -> dict[str, dict[int, Any]]:
    """Fixtures and FP32 references the driver holds, for Ray's object store."""
    return {
        "fixtures": {i: c.value for i, c in runner.fixtures.items() if c.error is None},
        "errors": {i: c.reason or str(c.error) for i, c in runner.fixtures.items() if c.error is not None},
        "references": {i: c.value for i, c in runner.references.items() if c.error is None},
        "reference_errors": {i: c.reason or str(c.error) for i, c in runner.references.items() if c.error is not None},
    }


def run_parallel(runner: Runner, todo: list[TrialSpec], n_done: int, n_total: int,
                 plugin_modules: tuple[str, ...] | None = None) -> ExecutorReport:
    """Run ``todo`` with the config's ``local`` or ``ray`` executor; the runner's store gets every record.

    Called by :meth:`htx.runner.Runner.run` after the driver loaded the model, fixtures and references.
    """
    cfg = runner.cfg
    executor = cfg.executor
    payload = RunPayload(
        run_id=runner.run_id, config=worker_config(cfg), model_hash=runner.loaded.hash,
        plugin_modules=plugin_modules if plugin_modules is not None else shipped_plugin_modules(runner.registry),
        sys_path=tuple(sys.path),
    )
    prepare_once(runner, todo)

    def is_search(spec: TrialSpec) -> bool:
        return bool(getattr(runner.registry.get("precision", spec.precision.name), "is_search", False))

    def cost(spec: TrialSpec) -> float:  # seconds of audio: what a trial's time grows with
        fixture = runner.fixtures.get(spec.fixture_index)
        return fixture.value.duration if fixture is not None and fixture.error is None else 0.0

    backend: Backend
    if executor.kind == "local":
        from htx.executors.local import LocalPool

        opts = executor.local
        cores = os.cpu_count() or 1
        workers = opts.workers or cores
        chunks = make_chunks(todo, workers, is_search, cost)
        workers = min(workers, len(chunks))
        threads = opts.threads_per_worker or max(1, cores // workers)
        backend = LocalPool(payload, workers, threads)
        retries, grace = opts.retries, opts.hang_grace_s
        runner.say(f"local: {len(todo)} trials in {len(chunks)} chunks on {workers} worker processes ({threads} torch threads each)")
    else:
        from htx.executors.ray_backend import RayBackend

        opts = executor.ray
        resources = {}
        for spec in todo:
            if spec.compute.key() not in resources:
                resources[spec.compute.key()] = trial_resources(spec, runner.registry, opts.resources)
        backend = RayBackend(opts, payload, shared_data(runner), resources, runner.say)
        chunks = make_chunks(todo, backend.slots, is_search, cost)
        retries, grace = opts.retries, opts.hang_grace_s
        runner.say(f"ray: {len(todo)} trials in {len(chunks)} chunks on a cluster with {backend.slots} CPUs")
    hang_limit = 3 * cfg.trial_timeout_s + grace
    report = ExecutorReport(executor.kind, backend.slots, len(chunks))
    t0 = time.perf_counter()
    report.started_at = time.time()
    try:
        _drive(runner, backend, chunks, n_done, n_total, retries, hang_limit, report)
    finally:
        backend.close()
    report.wall_s = time.perf_counter() - t0
    runner.executor_report = report
    ready, setup = report.ready_s, report.setup_s
    if ready:
        runner.say(
            f"{executor.kind}: workers ready {ready[0]:.1f}-{ready[-1]:.1f} s after dispatch "
            f"(of it building the run: median {statistics.median(setup):.2f} s)"
        )
    runner.say(
        f"{executor.kind}: {len(report.workers)} worker processes, first trial started after {report.first_start_s or 0:.1f} s; "
        f"{report.deaths} lost, {report.hangs} killed for silence; references computed by workers: {report.references_computed}"
    )
    return report


def _drive(runner: Runner, backend: Backend, chunks: list[Chunk], n_done: int, n_total: int, retries: int,
           hang_limit: float, report: ExecutorReport) -> None:
    states: dict[int, _ChunkState] = {}
    attempts: Counter[str] = Counter()
    next_id = max(c.id for c in chunks) + 1
    finished = n_done
    t0 = time.perf_counter()

    def submit(chunk: Chunk) -> None:
        states[chunk.id] = _ChunkState(chunk, last_event=time.monotonic())
        backend.submit(chunk)

    def resubmit(specs: list[TrialSpec]) -> None:
        nonlocal next_id
        if specs:
            submit(Chunk(next_id, tuple(specs)))
            next_id += 1

    def finish(rec: TrialRecord) -> None:
        nonlocal finished
        runner.finish_trial(rec)
        finished += 1
        runner.on_progress(trial_label(rec), finished, n_total)

    def fail(spec: TrialSpec, reason: str, status: str = "failed") -> None:
        rec = new_record(runner.run_id, spec, status, reason)
        rec.finished_at = rec.started_at
        finish(rec)

    def lost(st: _ChunkState, reason: str) -> None:
        rest = [s for s in st.chunk.specs if s.trial_id not in st.done]
        culprit = next((s for s in rest if s.trial_id == st.current), None)
        if st.kill_reason is not None:
            report.hangs += 1
            for spec in [culprit] if culprit else rest:  # silent during set-up: the whole chunk
                fail(spec, st.kill_reason)
            rest = [s for s in rest if culprit is not None and s is not culprit]
        elif culprit is not None:
            report.deaths += 1
            attempts[culprit.trial_id] += 1
            n = attempts[culprit.trial_id]
            if n > retries:
                tries = f" (tried {n} times)" if n > 1 else ""
                fail(culprit, f"worker died while running this trial: {reason}{tries}")
            else:
                resubmit([culprit])  # alone, so a second death is attributed to it for sure
            rest.remove(culprit)
        else:
            report.deaths += 1  # died before its first trial (set-up, or a lost node): retry the chunk
            for s in rest:
                attempts[s.trial_id] += 1
            for s in [s for s in rest if attempts[s.trial_id] > retries]:
                fail(s, f"worker died before the trial started: {reason}")
            rest = [s for s in rest if attempts[s.trial_id] <= retries]
        resubmit(rest)

    runner.on_progress("dispatching", finished, n_total)
    for chunk in chunks:
        submit(chunk)
    while states:
        now = time.monotonic()
        for st in states.values():
            if st.active and st.kill_reason is None and now - st.last_event > hang_limit:
                st.kill_reason = (
                    f"timeout: the worker sent nothing for {hang_limit:g} s (3 x trial_timeout_s + hang_grace_s) "
                    "and was killed"
                )
                backend.kill(st.chunk.id)
        for ev in backend.poll(0.2):
            st = states.get(ev.chunk)
            if st is None:
                continue
            st.last_event = time.monotonic()
            if ev.kind in ("begin", "start"):
                st.active = True
                if ev.kind == "start":
                    st.current = ev.trial_id
                    if report.first_start_s is None:
                        report.first_start_s = time.perf_counter() - t0
            elif ev.kind == "record":
                st.done.add(ev.trial_id)
                st.current = None
                if ev.stats:
                    report.workers[ev.stats["worker"]] = ev.stats
                finish(ev.record)
            elif ev.kind == "done":
                del states[ev.chunk]
                if len(st.done) < len(st.chunk.specs):
                    lost(st, "the worker ended the chunk without reporting every trial")
            elif ev.kind == "lost":
                del states[ev.chunk]
                lost(st, ev.reason or "unknown")
            elif ev.kind == "unavailable":
                del states[ev.chunk]
                for spec in st.chunk.specs:
                    if spec.trial_id not in st.done:
                        fail(spec, ev.reason or "unavailable", status="unavailable")
