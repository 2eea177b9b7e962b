"""``executor: ray``: every chunk of trials is a Ray task, on a cluster started here or an existing one.

Each task is a streaming generator: it yields ``start`` before and a TrialRecord after each trial, so the
driver writes results as they come, knows which trial was running when a worker or node was lost, and
measures silence from the moment the task really started (not from submission, since Ray queues tasks
until a worker with the requested resources is free). Tasks run in the worker's main thread, where the
in-process deadline (SIGALRM) works as in a serial run; a task silent for ``hang_timeouts x trial_timeout_s +
hang_grace_s`` is cancelled with ``ray.cancel(force=True)``, which kills its worker process.

The model is rebuilt by each worker from the config (checked against the driver's content hash); the
fixtures and FP32 references the driver computed go through Ray's object store once, so no worker
recomputes a reference, with or without a shared filesystem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import ray
import torch

from htx.config import RayExecutor
from htx.executors.base import Event
from htx.executors.plan import Chunk, RunPayload
from htx.executors.worker import run_chunk
from htx.workspace import SharedData


@ray.remote(max_retries=0)  # htx re-submits only the unfinished trials of a lost task (``retries``)
def _ray_chunk(payload: RunPayload, shared: SharedData, specs: tuple[Any, ...]) -> Any:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    yield from run_chunk(payload, specs, shared)


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def ray_options(request: dict[str, float]) -> dict[str, Any]:
    """Task options for a resource request: CPU and GPU are Ray's own, ``memory`` in bytes, the rest custom."""
    req = dict(request)
    opts: dict[str, Any] = {"num_cpus": req.pop("CPU", 1.0), "num_gpus": req.pop("GPU", 0.0)}
    if "memory" in req:
        opts["memory"] = req.pop("memory")
    if req:
        opts["resources"] = req
    return opts


class RayBackend:
    """Backend of the ``ray`` executor."""

    kind = "ray"

    def __init__(self, opts: RayExecutor, payload: RunPayload, shared: SharedData,
                 resources: dict[str, dict[str, float]], say: Callable[[str], None]) -> None:
        self.started_cluster = False
        if ray.is_initialized():
            say("ray: using the Ray connection this process already has")
        else:
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": opts.runtime_env or None}
            if opts.address == "local":
                kwargs.update(address="local", num_cpus=opts.num_cpus, include_dashboard=False)
            else:
                kwargs["address"] = opts.address
            t0 = time.perf_counter()
            ray.init(**kwargs)
            self.started_cluster = opts.address == "local"
            say(f"ray: {'started a local cluster' if self.started_cluster else 'connected to ' + opts.address} "
                f"in {time.perf_counter() - t0:.1f} s")
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.payload_ref = ray.put(payload)
        self.shared_ref = ray.put(shared)
        self.resources = resources
        self.running: list[tuple[Any, int]] = []  # (ObjectRefGenerator, chunk id)
        self.pending: list[Event] = []
        self.feasible: dict[str, bool] = {}  # resource request -> whether some node of the cluster offers it

    def _infeasible(self, request: dict[str, float]) -> str | None:
        key = repr(sorted(request.items()))
        if key not in self.feasible:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            self.feasible[key] = any(all(node.get(k, 0.0) >= v for k, v in request.items() if v) for node in nodes)
        if self.feasible[key]:
            return None
        return (
            f"unavailable: no node of the Ray cluster offers {request}; add one (e.g. on a Mac: "
            "`ray start --address=HEAD:6379 --resources='{\"macos\": 1}'`) or set executor.ray.resources"
        )

    def submit(self, chunk: Chunk) -> None:
        request = {"CPU": 1.0, **self.resources.get(chunk.specs[0].compute.key(), {})}
        why = self._infeasible(request)
        if why is not None:
            self.pending.append(Event(chunk.id, "unavailable", reason=why))
            return
        spec = chunk.specs[0]
        name = f"htx {spec.surgery.name} x {spec.precision.name} x {spec.compute.name} ({len(chunk.specs)} trials)"
        gen = _ray_chunk.options(name=name, **ray_options(request)).remote(self.payload_ref, self.shared_ref, chunk.specs)
        self.running.append((gen, chunk.id))

    def poll(self, timeout: float) -> list[Event]:
        events, self.pending = self.pending, []
        if not self.running:
            if not events:
                time.sleep(min(timeout, 0.05))
            return events
        gens = [g for g, _ in self.running]
        ready, _ = ray.wait(gens, num_returns=1, timeout=0 if events else timeout)
        if ready:  # take everything that is ready now, not just the first
            ready, _ = ray.wait(gens, num_returns=len(gens), timeout=0)
        ready_ids = {id(g) for g in ready}
        for gen, chunk_id in list(self.running):
            if id(gen) not in ready_ids:
                continue
            try:
                events.append(Event.from_worker(chunk_id, ray.get(next(gen))))
                continue
            except StopIteration:
                events.append(Event(chunk_id, "done"))
            except ray.exceptions.TaskCancelledError:
                events.append(Event(chunk_id, "lost", reason="the task was cancelled"))
            except Exception as exc:  # worker crashed, node died, object lost, ...
                events.append(Event(chunk_id, "lost", reason=_short(exc)))
            self.running = [(g, c) for g, c in self.running if g is not gen]
        return events

    def kill(self, chunk_id: int) -> None:
        for gen, cid in self.running:
            if cid == chunk_id:
                ray.cancel(gen, force=True)

    def close(self) -> None:
        for gen, _ in self.running:
            try:
                ray.cancel(gen, force=True)
            except Exception:
                pass
        self.running.clear()
        if self.started_cluster:
            ray.shutdown()
