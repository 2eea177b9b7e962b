"""``executor: serial`` (the default): chunks run one after another in the driver process.

A backend like the others, so the driver's bookkeeping (progress, records, failures) is the same code for
every executor. It shares the driver's trial builder, so prepared models, assignments and plugin instances
are built once for the whole run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from htx.builder import TrialBuilder
from htx.executors.base import Event
from htx.executors.plan import Chunk
from htx.trial import run_trial


def _chunk_events(builder: TrialBuilder, chunk: Chunk) -> Iterator[tuple[Any, ...]]:
    yield ("begin",)
    for spec in chunk.specs:
        yield ("start", spec.trial_id)
        yield ("record", run_trial(builder, spec), {"worker": "serial", "references_computed": 0})


class SerialBackend:
    """Runs each submitted chunk in this process, one event per :meth:`poll`."""

    kind = "serial"
    slots = 1

    def __init__(self, builder: TrialBuilder) -> None:
        self.builder = builder
        self.queue: deque[Chunk] = deque()
        self.current: tuple[Chunk, Iterator[tuple[Any, ...]]] | None = None

    def submit(self, chunk: Chunk) -> None:
        self.queue.append(chunk)

    def poll(self, timeout: float) -> list[Event]:
        if self.current is None:
            if not self.queue:
                return []
            chunk = self.queue.popleft()
            self.current = (chunk, _chunk_events(self.builder, chunk))
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
