"""How a trial fails: the in-process deadline and the one-line reason stored with a failed trial."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from htx.errors import HtxError


class TrialTimeout(Exception):
    """A trial (or its preparation or search) ran past ``trial_timeout_s``."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in the main thread after ``seconds`` (no-op elsewhere)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise TrialTimeout(f"{what} timed out after {seconds:g} s (trial_timeout_s); raise it or shrink the trial")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a failed trial."""
    if isinstance(exc, TrialTimeout):
        return f"timeout: {exc}"
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return f"out of memory: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if isinstance(exc, HtxError):
        return str(exc)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
