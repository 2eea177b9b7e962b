"""Precision policies that misbehave on purpose, for tests/test_executors.py.

They live in an importable module (tests/ is on the driver's ``sys.path``, which executors hand to their
workers) because worker processes load a run's plugins by module name; a plugin built in memory with
``module_plugin`` cannot reach them. Use them with the `local` and `ray` executors, or the default (isolated) `serial`
one: with `serial: {isolate: false}` they would kill or hang the test process itself.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Literal

from htx.api import Assignment, Params, StaticPolicy
from htx.hookspecs import hookimpl


class KillParams(Params):
    how: Literal["exit", "sigkill", "abort"] = "exit"


class KillWorker(StaticPolicy):
    """Ends the process running it: ``os._exit(3)``, SIGKILL (a segfaulting runtime, the OOM killer) or
    ``os.abort()`` (a failed assertion in native code)."""

    name = "kill-worker"
    Params = KillParams

    def select(self, ops):
        if self.params.how == "exit":
            os._exit(3)
        if self.params.how == "abort":
            os.abort()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)


class Hang(StaticPolicy):
    """Blocks SIGALRM, so the in-process deadline cannot fire, and sleeps: a trial stuck in native code."""

    name = "hang"

    def select(self, ops):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(600)
        return Assignment.all_fp32()


class CrashParams(Params):
    marker: str


class CrashDriverOnce(StaticPolicy):
    """SIGKILLs the driver once, then behaves like ``fp32``.

    The driver's pid comes from ``HTX_TEST_DRIVER_PID`` (pool workers are forked by a fork server, so
    their parent is not the driver)."""

    name = "crash-driver-once"
    Params = CrashParams

    def select(self, ops):
        marker = Path(self.params.marker)
        if not marker.exists():
            driver = int(os.environ.get("HTX_TEST_DRIVER_PID", os.getppid()))
            marker.write_text(str(driver))
            os.kill(driver, signal.SIGKILL)
        return Assignment.all_fp32()


class GateParams(Params):
    started: str
    release: str


class Gate(StaticPolicy):
    """Writes ``started``, then waits until ``release`` exists, then behaves like ``fp32``: a trial that is
    surely in progress when a test interrupts the run (the test waits for the file, not for time)."""

    name = "gate"
    Params = GateParams

    def select(self, ops):
        Path(self.params.started).write_text(str(os.getpid()))
        release = Path(self.params.release)
        while not release.exists():
            time.sleep(0.05)
        return Assignment.all_fp32()


@hookimpl
def htx_register_precision_policies(register):
    register(KillWorker)
    register(Hang)
    register(CrashDriverOnce)
    register(Gate)
