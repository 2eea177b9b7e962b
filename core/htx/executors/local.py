"""``executor: local``: a pool of worker processes on this machine.

Each worker is a process with its own pipe: the driver sends it one chunk at a time and it
streams back ``start``/``record`` events. Unlike ``concurrent.futures.ProcessPoolExecutor`` (where one
worker's death breaks the whole pool and kills every running trial, without saying which process died
or how), a dead worker here costs only its current trial, whose row gets the exit code or signal; the
pool replaces the process and the run goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from htx.executors.base import Event
from htx.executors.plan import Chunk, RunPayload
from htx.executors.worker import run_chunk, set_messages


def exit_reason(exitcode: int | None) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _worker_main(conn: Connection, payload: RunPayload, threads: int) -> None:
    """A pool process: run chunks from ``conn`` until told to stop or the driver goes away."""
    # Ctrl-C reaches the whole process group: the driver decides what to do, not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    current = [-1]

    def say(msg: str) -> None:  # search progress and log lines reach the driver as they happen
        try:
            conn.send((current[0], ("message", msg)))
        except (BrokenPipeError, OSError):
            pass

    set_messages(say)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        chunk: Chunk = msg
        current[0] = chunk.id
        try:
            for event in run_chunk(payload, chunk.specs):
                conn.send((chunk.id, event))
            conn.send((chunk.id, ("done",)))
        except (BrokenPipeError, OSError):
            return  # the driver is gone (crashed or killed): stop; `htx run --resume` continues the run


#: Imported once by the fork server, so each worker starts with them loaded. torch imports ``torch._dynamo``
#: (and the sympy it pulls in) lazily during a trial's first forward pass: 1.6-3.5 s per worker otherwise.
PRELOAD = ("torch", "torch._dynamo", "demucs.htdemucs", "htx.executors.worker", "htx_plugins")


def worker_context(plugin_modules: tuple[str, ...] = ()) -> Any:
    """The multiprocessing context for pool workers: ``forkserver`` preloading torch and htx (``spawn``
    where there is no fork server, e.g. on Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Only takes effect when the fork server starts (first worker of this process); a module that fails
    # to import there is skipped, and the worker imports it itself.
    ctx.set_forkserver_preload([*PRELOAD, *plugin_modules])
    return ctx


def start_fork_server(plugin_modules: tuple[str, ...] = ()) -> None:
    """Start the fork server now (it imports torch and htx: 2-7 s), so that this overlaps the driver's own
    model load and references instead of delaying the first trial."""
    ctx = worker_context(plugin_modules)
    if ctx.get_start_method() == "forkserver":
        forkserver.ensure_running()


@dataclass
class _Worker:
    process: Any
    conn: Connection
    chunk: int | None = None


class LocalPool:
    """Backend of the ``local`` executor: ``workers`` processes, ``threads`` torch threads each."""

    kind = "local"

    def __init__(self, payload: RunPayload, workers: int, threads: int) -> None:
        # Not plain fork: the driver has already run torch (OpenMP threads do not survive a fork).
        self.ctx = worker_context(payload.plugin_modules)
        self.payload = payload
        self.slots = workers
        self.threads = threads
        self.workers: list[_Worker] = []
        self.queue: deque[Chunk] = deque()
        self.started = 0

    def _start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        self.started += 1
        proc = self.ctx.Process(
            target=_worker_main, args=(child, self.payload, self.threads), name=f"htx-worker-{self.started}", daemon=True
        )
        proc.start()
        child.close()
        worker = _Worker(proc, parent)
        self.workers.append(worker)
        return worker

    def submit(self, chunk: Chunk) -> None:
        self.queue.append(chunk)

    def _dispatch(self) -> None:
        while self.queue:
            worker = next((w for w in self.workers if w.chunk is None), None)
            if worker is None:
                if len(self.workers) >= self.slots:
                    return
                worker = self._start_worker()
            chunk = self.queue.popleft()
            try:
                worker.conn.send(chunk)
                worker.chunk = chunk.id
            except (BrokenPipeError, OSError):
                self.queue.appendleft(chunk)  # it died idle: poll() reaps it, the chunk goes to another
                worker.chunk = -1

    def poll(self, timeout: float) -> list[Event]:
        # Hand out queued chunks only now, after the driver has written the records of the last poll:
        # a trial that crashes the driver then cannot take earlier, unwritten results with it.
        self._dispatch()
        events: list[Event] = []
        handles: list[Any] = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
        ready = set(wait(handles, timeout)) if handles else set()
        for worker in list(self.workers):
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            try:
                while worker.conn.poll():
                    chunk_id, msg = worker.conn.recv()
                    events.append(Event.from_worker(chunk_id, msg))
                    if msg[0] == "done":
                        worker.chunk = None
            except (EOFError, OSError):
                pass
            if not worker.process.is_alive():
                worker.process.join()
                if worker.chunk is not None and worker.chunk >= 0:
                    events.append(Event(worker.chunk, "lost", reason=f"worker process {worker.process.pid} died ({exit_reason(worker.process.exitcode)})"))
                worker.conn.close()
                self.workers.remove(worker)
        return events

    def kill(self, chunk_id: int) -> None:
        for worker in self.workers:
            if worker.chunk == chunk_id and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=5 if worker.chunk is None else 0.1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers.clear()
