"""The driver side of a run: plan chunks, hand them to a backend, write what comes back.

Every executor is a backend of one protocol (:class:`htx.executors.base.Backend`): ``serial`` (this
process), ``local`` (a process pool) and ``ray``.

The driver alone writes the store: every record a worker streams back is committed at once, in its own
transaction, so an interrupted or crashed driver loses nothing and ``htx run --resume RUN_ID`` continues.
A backend reports, per chunk, ``begin`` (a worker took it), ``start``
(trial id), ``record`` (a finished trial), ``done``, or ``lost`` (the worker or node died, or it was
killed). The driver turns a loss into a failed row for the trial that was running, re-submits the
chunk's other trials, and kills a chunk that stays silent longer than ``hang_timeouts x trial_timeout_s +
hang_grace_s`` (a trial stuck where the in-process deadline cannot interrupt it).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from htx.errors import HtxError
from htx.executors.base import Backend
from htx.executors.local import LocalPool, start_fork_server
from htx.executors.plan import (
    Chunk,
    RunPayload,
    grid_chunks,
    make_chunks,
    shipped_plugin_modules,
    trial_resources,
    worker_config,
)
from htx.executors.serial import SerialBackend
from htx.grid import TrialSpec
from htx.store import TrialRecord
from htx.trial import new_record, trial_label

if TYPE_CHECKING:
    from htx.config_executor import HangLimits
    from htx.run import Run


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


def prepare_once(run: Run, todo: list[TrialSpec]) -> None:
    """Prepare each (surgery, compute) pair once here when the unit caches its preparation on disk.

    Workers then load that conversion instead of converting the same model in parallel. Failures are
    left to the workers, whose trials record them like in a serial run.
    """
    seen: set[tuple[str, ...]] = set()
    for spec in todo:
        if spec.prepare_key in seen:
            continue
        seen.add(spec.prepare_key)
        if getattr(run.registry.get("compute", spec.compute.name), "disk_cached_prepare", False):
            try:
                run.builder.prepared(spec)
            except Exception:
                pass
    run.builder.forget_prepared()  # the driver runs no trial: free the models


def start_workers_early(run: Run, todo: list[TrialSpec]) -> tuple[str, ...] | None:
    """The plugin modules workers import, or ``None`` when trials run in this process (serial with
    ``isolate: false``, or with plugins registered in memory only). The fork server starts now, so its
    torch import overlaps the driver's model load."""
    if not todo:
        return None
    kind = run.cfg.executor.kind
    if kind == "serial":
        if not run.cfg.executor.serial_opts.isolate:
            return None
        try:
            modules = shipped_plugin_modules(run.registry)
        except HtxError as exc:
            run.say(f"serial: trials run in this process, not a child ({str(exc).split(' so ')[0]}, so a child "
                    "cannot load it); a trial that crashes the process ends the run, and --resume records it as failed")
            return None
    else:
        modules = shipped_plugin_modules(run.registry)
    if kind in ("serial", "local"):
        start_fork_server(modules)
    return modules


def execute(run: Run, todo: list[TrialSpec], n_done: int, n_total: int,
            plugin_modules: tuple[str, ...] | None = None) -> ExecutorReport:
    """Run ``todo`` with the config's executor; the run's store gets every record.

    Called by :meth:`htx.run.Run.execute` after the driver loaded the model, fixtures and references, with
    what :func:`start_workers_early` returned. A serial run without plugin modules to ship runs in process.
    """
    cfg = run.cfg
    executor = cfg.executor
    if run.run_id is None:
        raise HtxError("internal: execute() needs a started run (Run.execute creates it)")
    run_id: str = run.run_id
    backend: Backend
    if executor.kind == "serial" and plugin_modules is None:
        backend = SerialBackend(run.builder, on_start=run.mark_running)
        chunks = grid_chunks(todo)
        report = ExecutorReport("serial", 1, len(chunks))
        report.started_at = time.time()
        t0 = time.perf_counter()
        try:
            _drive(run, backend, chunks, n_done, n_total, 0, float("inf"), report)
        finally:
            backend.close()
        report.wall_s = time.perf_counter() - t0
        run.executor_report = report
        return report

    payload = RunPayload(
        run_id=run_id, config=worker_config(cfg), model_hash=run.workspace.model.hash,
        plugin_modules=plugin_modules if plugin_modules is not None else shipped_plugin_modules(run.registry),
        sys_path=tuple(sys.path),
    )
    prepare_once(run, todo)

    def cost(spec: TrialSpec) -> float:  # seconds of audio: what a trial's time grows with
        fixture = run.workspace.fixtures.get(spec.fixture_index)
        return fixture.get().duration if fixture is not None and fixture.ok else 0.0

    hang: HangLimits  # the executor's options: how long a worker may stay silent
    if executor.kind == "serial":
        threads = torch.get_num_threads()
        chunks = grid_chunks(todo)
        backend = LocalPool(payload, 1, threads)
        retries, hang = 0, executor.serial_opts
        run.say(f"serial: {len(todo)} trials one at a time in a child process ({threads} torch thread"
                f"{'s' if threads != 1 else ''}): a crash or hang there becomes a failed row")
    elif executor.kind == "local":
        opts = executor.local_opts
        cores = os.cpu_count() or 1
        workers = opts.workers or cores
        chunks = make_chunks(todo, workers, run.builder.is_search, cost)
        workers = min(workers, len(chunks))
        threads = opts.threads_per_worker or max(1, cores // workers)
        backend = LocalPool(payload, workers, threads)
        retries, hang = opts.retries, opts
        run.say(f"local: {len(todo)} trials in {len(chunks)} chunks on {workers} worker process{'es' if workers != 1 else ''} "
                f"({threads} torch thread{'s' if threads != 1 else ''} each)")
    else:
        from htx.executors.ray_backend import RayBackend  # ray is an optional dependency (htx[ray])

        ray_opts = executor.ray_opts
        resources = {}
        for spec in todo:
            if spec.compute.key() not in resources:
                resources[spec.compute.key()] = trial_resources(spec, run.registry, ray_opts.resources)
        backend = RayBackend(ray_opts, payload, run.workspace.shared_data(), resources, run.say)
        chunks = make_chunks(todo, backend.slots, run.builder.is_search, cost)
        retries, hang = ray_opts.retries, ray_opts
        run.say(f"ray: {len(todo)} trials in {len(chunks)} chunks on a cluster with {backend.slots} CPUs")
    hang_limit, hang_rule = hang.hang_limit(cfg.trial_timeout_s)
    report = ExecutorReport(executor.kind, backend.slots, len(chunks))
    t0 = time.perf_counter()
    report.started_at = time.time()
    try:
        _drive(run, backend, chunks, n_done, n_total, retries, hang_limit, report, hang_rule)
    finally:
        backend.close()
    report.wall_s = time.perf_counter() - t0
    run.executor_report = report
    ready, setup = report.ready_s, report.setup_s
    if executor.kind == "serial":
        return report
    if ready:
        run.say(
            f"{executor.kind}: workers ready {ready[0]:.1f}-{ready[-1]:.1f} s after dispatch "
            f"(of it building the run: median {statistics.median(setup):.2f} s)"
        )
    n_workers = len(report.workers)
    run.say(
        f"{executor.kind}: {n_workers} worker process{'es' if n_workers != 1 else ''}, first trial started after "
        f"{report.first_start_s or 0:.1f} s; {report.deaths} lost, {report.hangs} killed for silence; "
        f"references computed by workers: {report.references_computed}"
    )
    return report


def _drive(run: Run, backend: Backend, chunks: list[Chunk], n_done: int, n_total: int, retries: int,
           hang_limit: float, report: ExecutorReport, hang_rule: str = "") -> None:
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
        run.finish_trial(rec)
        finished += 1
        run.on_progress(trial_label(rec), finished, n_total)

    def fail(spec: TrialSpec, reason: str, status: str = "failed") -> None:
        rec = new_record(run.run_id or "", spec, status, reason)
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

    run.on_progress("dispatching" if backend.kind != "serial" else "starting", finished, n_total)
    for chunk in chunks:
        submit(chunk)
    while states:
        now = time.monotonic()
        for st in states.values():
            if st.active and st.kill_reason is None and now - st.last_event > hang_limit:
                st.kill_reason = (
                    f"timeout: the worker sent nothing for {hang_limit:g} s ({hang_rule}) "
                    "and was killed"
                )
                backend.kill(st.chunk.id)
        for ev in backend.poll(0.2):
            found = states.get(ev.chunk)
            if found is None:
                continue
            st = found
            st.last_event = time.monotonic()
            if ev.kind == "message":  # a worker's log line (search progress): also a sign of life
                run.say(ev.reason or "")
                continue
            if ev.kind in ("begin", "start"):
                st.active = True
                if ev.kind == "start":
                    st.current = ev.trial_id
                    starting = next((s for s in st.chunk.specs if s.trial_id == ev.trial_id), None)
                    if starting is not None:
                        run.on_progress(trial_label(starting), finished, n_total)
                    if report.first_start_s is None:
                        report.first_start_s = time.perf_counter() - t0
            elif ev.kind == "record" and ev.record is not None:
                st.done.add(ev.record.trial_id)
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
