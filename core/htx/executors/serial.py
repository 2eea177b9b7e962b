"""In-process ``serial``: chunks run one after another in the driver process.

``executor: serial`` runs its trials in one child process by default (the ``local`` pool with one worker,
so a crash or hang becomes a failed row); this backend is for ``isolate: false`` and for plugins registered
in memory only, which cannot reach a child. It is a backend like the others, so the driver's bookkeeping
(progress, records, failures) is the same code for every executor, and it shares the driver's trial builder.
Before each trial it tells the run which trial is running, so that a crash of the process is recorded
against that trial on ``--resume``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from htx.builder import TrialBuilder
from htx.executors.base import Event
from htx.executors.plan import Chunk
from htx.trial import run_trial


def _chunk_events(builder: TrialBuilder, chunk: Chunk, on_start: Callable[[str], None]) -> Iterator[tuple[Any, ...]]:
    yield ("begin",)
    for spec in chunk.specs:
        on_start(spec.trial_id)
        yield ("start", spec.trial_id)
        rec = run_trial(builder, spec)
        yield ("record", rec, {"worker": "serial", "references_computed": 0})
        if rec.status == "interrupted":  # recorded with its best set above; now stop the run as Ctrl-C does
            raise KeyboardInterrupt


class SerialBackend:
    """Runs each submitted chunk in this process, one event per :meth:`poll`."""

    kind = "serial"
    slots = 1

    def __init__(self, builder: TrialBuilder, on_start: Callable[[str], None] = lambda trial_id: None) -> None:
        self.builder = builder
        self.on_start = on_start  # the run notes the running trial, so a crash can be attributed on resume
        self.queue: deque[Chunk] = deque()
        self.current: tuple[Chunk, Iterator[tuple[Any, ...]]] | None = None

    def submit(self, chunk: Chunk) -> None:
        self.queue.append(chunk)

    def poll(self, timeout: float) -> list[Event]:
        if self.current is None:
            if not self.queue:
                return []
            chunk = self.queue.popleft()
            self.current = (chunk, _chunk_events(self.builder, chunk, self.on_start))
        chunk, events = self.current
        msg = next(events, None)
        if msg is None:
            self.current = None
            return [Event(chunk.id, "done")]
        return [Event.from_worker(chunk.id, msg)]

    def kill(self, chunk_id: int) -> None:  # nothing to kill: a trial here runs in the driver
        pass

    def close(self) -> None:
        self.queue.clear()
        self.current = None
