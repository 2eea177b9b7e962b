"""The executor part of the experiment config: where trials run (``serial``, ``local`` or ``ray``) and how."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from htx.errors import ConfigError


class Strict(BaseModel):
    """A config section: no unknown keys."""

    model_config = ConfigDict(extra="forbid")


class HangLimits(Strict):
    """How long a worker (a local pool's process, a serial run's child, a Ray task) may stay silent before it is
    killed: ``hang_timeouts x trial_timeout_s + hang_grace_s``."""

    hang_grace_s: float = Field(60.0, gt=0, description="a worker silent for hang_timeouts x trial_timeout_s + this is killed")
    hang_timeouts: float = Field(3.0, ge=1, description="trial timeouts of silence before a worker is killed (3: a trial's "
                                 "prepare, policy and measurement phases each get trial_timeout_s)")

    def hang_limit(self, trial_timeout_s: float) -> tuple[float, str]:
        """Seconds of silence after which a worker is killed, and the rule that gave them (for its failed row)."""
        return self.hang_timeouts * trial_timeout_s + self.hang_grace_s, f"{self.hang_timeouts:g} x trial_timeout_s + hang_grace_s"


class LocalExecutor(HangLimits):
    """``executor: {local: {workers: N}}``: a pool of worker processes on this machine."""

    workers: int | None = Field(None, ge=1, description="worker processes (default: one per CPU core)")
    threads_per_worker: int | None = Field(None, ge=1, description="torch threads per worker (default: cores // workers)")
    retries: int = Field(0, ge=0, description="re-runs of a trial whose worker process died")


class RayExecutor(HangLimits):
    """``executor: {ray: {address: local|auto|ray://host:port}}``: trials as Ray tasks (``pip install 'htx[ray]'``)."""

    address: str = "local"
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the cluster started by `address: local` (default: all)")
    retries: int = Field(1, ge=0, description="re-runs of a trial whose worker or node died")
    resources: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Ray resources per compute unit name or entry key, replacing the unit's own"
    )
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="passed to ray.init (e.g. py_modules)")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v in ("local", "auto") or v.startswith("ray://") or (":" in v and "/" not in v):
            return v
        raise ValueError(f"address {v!r}: use `local` (start a cluster here), `auto` (the running cluster), `ray://host:port` or `host:port`")


EXECUTOR_KINDS = ("serial", "local", "ray")
RAY_INSTALL = "pip install 'htx[ray]'"


class SerialExecutor(HangLimits):
    """``executor: serial`` (the default): one trial at a time.

    ``isolate: true`` (default) runs them in one child process, so a trial that aborts, segfaults, runs out
    of memory or hangs past ``hang_timeouts x trial_timeout_s + hang_grace_s`` becomes a failed row and the run goes on.
    Plugins registered in memory only (``module_plugin``) cannot reach a child: such runs, and ``isolate:
    false``, run in this process, where a crash ends the run and ``--resume`` records the trial that was
    running as failed.
    """

    isolate: bool = Field(True, description="run trials in a child process (crashes and hangs become failed rows)")


class Executor(Strict):
    """Where trials run: ``serial`` (one at a time, the default), ``local`` (process pool) or ``ray``."""

    kind: Literal["serial", "local", "ray"] = "serial"
    serial: SerialExecutor | None = None
    local: LocalExecutor | None = None
    ray: RayExecutor | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": value}
        if isinstance(value, dict) and value and "kind" not in value:
            if len(value) != 1 or next(iter(value)) not in EXECUTOR_KINDS:
                raise ValueError(f"executor is `serial`, `local`, `ray` or a one-key mapping such as {{local: {{workers: 4}}}}, got {sorted(value)}")
            (kind, opts), = value.items()
            return {"kind": kind, kind: opts or {}}
        return value

    @model_validator(mode="after")
    def _check(self) -> Executor:
        if self.kind == "serial" and self.serial is None:
            self.serial = SerialExecutor()
        if self.kind == "local" and self.local is None:
            self.local = LocalExecutor()
        if self.kind == "ray" and self.ray is None:
            self.ray = RayExecutor()
        other = {"serial": ("local", "ray"), "local": ("serial", "ray"), "ray": ("serial", "local")}[self.kind]
        given = [k for k in other if getattr(self, k) is not None]
        if given:
            raise ValueError(f"executor kind is {self.kind!r} but options for {given[0]!r} are given; keep one")
        if self.kind == "ray":
            if importlib.util.find_spec("ray") is None:
                raise ValueError(f"the `ray` executor needs Ray, an optional dependency: {RAY_INSTALL} (or use executor `local`)")
        return self

    @property
    def serial_opts(self) -> SerialExecutor:
        return self.serial or SerialExecutor()

    @property
    def local_opts(self) -> LocalExecutor:
        return self.local or LocalExecutor()

    @property
    def ray_opts(self) -> RayExecutor:
        return self.ray or RayExecutor()


def executor_override(kind: str | None, workers: int | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A raw-config edit for ``htx run --executor KIND --workers N`` (``--workers`` alone means ``local``).

    Options already in the config are kept when the kind stays the same.
    """

    def apply(data: dict[str, Any]) -> dict[str, Any]:
        current = data.get("executor", "serial")
        if isinstance(current, str):
            cur_kind, cur_opts = current, dict[str, Any]()
        elif isinstance(current, dict) and "kind" in current:
            cur_kind = current["kind"]
            cur_opts = current.get(cur_kind) or {}
        elif isinstance(current, dict) and len(current) == 1:
            (cur_kind, cur_opts), = current.items()
            cur_opts = cur_opts or {}
        else:
            cur_kind, cur_opts = None, {}
        new_kind = kind or ("local" if workers is not None else cur_kind)
        opts = dict(cur_opts) if new_kind == cur_kind and isinstance(cur_opts, dict) else {}
        if workers is not None:
            if new_kind != "local":
                raise ConfigError([f"--workers sets the size of the local process pool; it does not apply to executor {new_kind!r} (for ray, set executor.ray.num_cpus)"])
            opts["workers"] = workers
        return {**data, "executor": {new_kind: opts} if opts else new_kind}

    return apply


__all__ = ["EXECUTOR_KINDS", "RAY_INSTALL", "Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "executor_override"]
