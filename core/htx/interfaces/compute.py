"""The compute-unit interface: prepare an inner model once, list its ops, run it under an assignment."""

from __future__ import annotations

import platform
import sys
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from htx.errors import UnavailableError
from htx.interfaces.base import Plugin
from htx.interfaces.surgery import InnerModel
from htx.results import Placement
from htx.types import Assignment, OpInfo, OpStats

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class ComputeUnit(Plugin):
    """Executes an inner model under a precision assignment.

    ``prepare(inner, example_inputs, cache_dir=...)`` runs once per (model, surgery, input shape), on the
    ``args`` of the inner model's ``host_pre``; ``ops(prepared)`` lists its op instances in execution
    order; ``compile(prepared, assignment)`` returns a callable taking those args and returning the inner
    model's output tuple (the pipeline, not the unit, applies ``host_post``). ``record`` (optional) returns
    per-op :class:`OpStats` from one pass; ``export`` (optional) writes a deployable model. ``runtime`` is
    what results show (``torch:cpu``, ``coreml:emulated``, ...); ``emulated`` is True when latency is not
    the target device's.

    Example::

        from htx.api import ComputeUnit, hookimpl

        class Eager(ComputeUnit):
            '''Runs the inner model as is, ignoring the assignment (every op FP32).'''
            name = "eager"
            def prepare(self, inner, example_inputs, cache_dir=None):
                return inner
            def ops(self, prepared):
                return []
            def compile(self, prepared, assignment):
                return prepared

        @hookimpl
        def htx_register_compute_units(register):
            register(Eager)
    """

    kind = "compute"
    emulated: bool = False
    #: True when ``prepare`` stores its result under ``cache_dir`` (a conversion): parallel executors then
    #: prepare each (surgery, compute) pair once in the driver, so workers load it instead of converting.
    disk_cached_prepare: ClassVar[bool] = False

    @property
    def runtime(self) -> str:
        """What results show as the runtime (``torch:cpu``); a unit whose low precision is not FP16 appends it
        (``torch:cpu:bf16``), so a row's "fp16" share reads as that dtype."""
        return self.name

    @property
    def low_precision(self) -> str:
        """The dtype an op assigned low precision runs in: ``"fp16"`` (the default) or what the unit runs
        (``"bf16"``). Assignments, columns and metrics say "fp16" for "low precision"; trials store this."""
        return "fp16"

    def resources(self) -> dict[str, float]:
        """What a worker needs to run this unit, as Ray resources: ``{"GPU": 1}``, ``{"macos": 1}``.

        ``{}`` (the default) means one CPU. The ``ray`` executor requests these per trial (the config's
        ``executor.ray.resources`` can replace them); other executors ignore them.
        """
        return {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @abstractmethod
    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> Any:
        """Prepare ``inner`` for ``example_inputs``' shapes (trace, convert, ...); called once per shape."""

    @abstractmethod
    def ops(self, prepared: Any) -> list[OpInfo]:
        """The op instances of ``prepared``, in execution order."""

    @abstractmethod
    def compile(self, prepared: Any, assignment: Assignment) -> Forward:
        """A callable running ``prepared`` under ``assignment``: ``fn(*args) -> output tuple``."""

    def search_forward(self, prepared: Any, assignment: Assignment) -> Forward:
        """The forward a search evaluates ``assignment`` with. A search builds one per evaluation, so a unit whose
        ``compile`` is slow to build (a compiled mode) returns its fast-to-rebuild path here; the trial that
        measures the answer runs ``compile``. Same numerics contract as ``compile``; default: ``compile``."""
        return self.compile(prepared, assignment)

    def compile_segment(self, prepared: Any, assignment: Assignment,
                        wrap: Callable[[Forward], Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Optional: one compiled callable for a whole segment batch, ``mix [B, C, L] -> stems [B, S, C, L]``.
        ``wrap(forward)`` is the segment path around this unit's model forward (the STFT backend's in-graph STFT,
        the surgery's host steps, the forward, the iSTFT); a unit that compiles graphs traces it whole, so the
        STFT and iSTFT run inside the graph. ``None`` (default): the pipeline runs the stages around
        ``compile``'s forward. Same numerics contract as ``compile``."""
        return None

    def record(self, prepared: Any, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        raise NotImplementedError(f"compute unit {self.name!r} cannot record per-op statistics")

    def fp16_noise(
        self, prepared: Any, inputs: tuple[torch.Tensor, ...], post: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
        projections: int = 8, seed: int = 0,
    ) -> dict[str, float]:
        """First-order estimate of the noise each compute op adds in FP16, relative to the output's power.

        For op ``i`` with FP32 output ``y_i`` and FP16 output ``y_i + e_i`` (from the same FP32 inputs), the
        output error it causes is ``J_i e_i`` to first order, ``J_i`` the Jacobian of the final waveform
        ``post(outputs)`` with respect to ``y_i``. Its power ``||J_i e_i||^2`` equals ``E[(r . J_i e_i)^2]`` for a
        Gaussian ``r``, and ``r . J_i e_i = (J_i^T r) . e_i``: one backward pass of ``r`` gives every op's term, so
        ``projections`` backward passes estimate all ops at once. Returns ``{op name: power / ||post(outputs)||^2}``
        (``inf`` when the op's FP16 output overflows or turns NaN). Units without gradients raise
        ``NotImplementedError`` (the default).
        """
        raise NotImplementedError(f"compute unit {self.name!r} gives no gradients")

    def placement(self, prepared: Any, assignment: Assignment) -> Placement:
        """Where ``assignment`` would run (:class:`htx.results.Placement`): ``partitions`` (precision segments in
        execution order), ``ne_ops`` / ``off_ne_ops`` and ``casts`` where the unit knows them, ``source`` saying
        how it knows; ``Placement()`` (all ``None``) when it cannot tell."""
        return Placement()

    def export(self, prepared: Any, assignment: Assignment, path: Path) -> Path:
        """Write a deployable model of ``prepared`` under ``assignment`` to ``path``; units that cannot say so."""
        raise UnavailableError(f"compute unit {self.name!r} cannot export a deployable model")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_runtime(requested: str, native_available: Callable[[], tuple[bool, str]]) -> str:
    """A unit's ``runtime: auto | native | emulated``: ``auto`` is ``native`` where ``native_available()`` says
    the platform runtime can run, else ``emulated``; the other two stand as asked."""
    if requested == "auto":
        return "native" if native_available()[0] else "emulated"
    return requested


def native_unavailable(requested: str, native_available: Callable[[], tuple[bool, str]]) -> str | None:
    """Why ``runtime: native`` cannot run here, said the way ``available()`` says it; None when it can or when
    another runtime was asked for (``auto`` falls back to the emulator instead)."""
    if requested != "native":
        return None
    ok, why = native_available()
    return None if ok else f"runtime native: {why} (use runtime: auto or emulated to emulate it)"


def macos_runtime_available(runtime: str, package: str, probe: Callable[[], object], fix: str,
                            min_major: int = 0) -> tuple[bool, str]:
    """A ``native_available`` for a runtime only macOS has: ``(False, why)`` off macOS, below macOS
    ``min_major``, or where ``probe()`` (an import of ``package``'s runtime) raises, with ``fix`` (what to
    install); else ``(True, "")``."""
    need = f"macOS {min_major}" if min_major else "macOS"
    if sys.platform != "darwin":
        return False, f"the {runtime} runtime needs {need}; this is {platform.system() or sys.platform}"
    version = platform.mac_ver()[0] or "0"
    if min_major and int(version.split(".")[0]) < min_major:
        return False, f"the {runtime} runtime needs {need}; this is macOS {version}"
    try:
        probe()
    except Exception as exc:  # pragma: no cover - depends on the Mac's install
        return False, f"{package} has no {runtime} runtime here ({type(exc).__name__}: {exc}); {fix}"
    return True, ""


class NativeOrEmulated:
    """Mixin (before :class:`ComputeUnit`) for a unit whose params have ``runtime: auto | native | emulated`` and
    that emulates a platform runtime where it cannot run: the unit says how to check for the runtime
    (:meth:`native_available`); the mixin gives ``resolved_runtime``, ``emulated`` and :meth:`native_unavailable`."""

    params: Any

    def native_available(self) -> tuple[bool, str]:
        """Whether the platform runtime can run here, and why not."""
        raise NotImplementedError

    @property
    def resolved_runtime(self) -> str:
        return resolve_runtime(self.params.runtime, self.native_available)

    @property
    def emulated(self) -> bool:
        return self.resolved_runtime == "emulated"

    def native_unavailable(self) -> str | None:
        """Why the requested ``runtime: native`` cannot run here (None when it can or was not asked for)."""
        return native_unavailable(self.params.runtime, self.native_available)


__all__ = ["ComputeUnit", "Forward", "NativeOrEmulated", "macos_runtime_available", "native_unavailable", "resolve_runtime"]
