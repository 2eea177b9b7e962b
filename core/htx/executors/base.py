"""What every executor backend shares: the events it reports about a chunk, and the protocol it follows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from htx.executors.plan import Chunk
from htx.store import TrialRecord


@dataclass
class Event:
    """One thing a backend observed about a chunk."""

    chunk: int
    kind: str  # begin | start | record | message | done | lost | unavailable
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
        if kind == "message":
            return cls(chunk, kind, reason=msg[1])
        return cls(chunk, kind)


class Backend(Protocol):
    """Where chunks run. ``slots`` is how many run at once (for chunk sizing)."""

    kind: str
    slots: int

    def submit(self, chunk: Chunk) -> None: ...

    def poll(self, timeout: float) -> list[Event]: ...

    def kill(self, chunk_id: int) -> None: ...

    def close(self) -> None: ...
