"""Plugin base classes and the small value types passed between the core and plugins.

Every plugin kind has a base class here. A plugin class sets ``name``, defines a pydantic ``Params``
model for its options (``extra="forbid"``) and documents itself with a complete example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

LOW = "fp16"
HIGH = "fp32"


class Params(BaseModel):
    """Base for plugin options: strict, immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Common behaviour of every plugin class.

    ``name`` is unique within the plugin's kind. ``Params`` validates the options given in the config.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the plugin can run here, else ``(False, reason)``."""
        return True, ""

    @property
    def label(self) -> str:
        """``name`` plus the options that differ from their defaults, e.g. ``torch[low_dtype=bf16]``."""
        changed = {k: v for k, v in self.params.model_dump().items() if v != self.Params.model_fields[k].default}
        if not changed:
            return self.name
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(changed.items()))
        return f"{self.name}[{inner}]"

    def __repr__(self) -> str:
        return f"<{self.kind} {self.label}>"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------------------------------
# ops and assignments


@dataclass(frozen=True)
class OpInfo:
    """One op instance of a prepared model.

    ``name`` is stable for a given model, surgery and input shape; ``type`` uses Core ML MIL op names
    (``conv``, ``linear``, ``matmul``, ``softmax``, ...). ``compute`` is False for reshape-like ops,
    which move data without arithmetic and do not count in ``fp16_op_fraction``.
    """

    name: str
    type: str
    compute: bool = True
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Assignment:
    """The op instances that run in low precision (FP16); every other op runs in FP32."""

    fp16: frozenset[str] = frozenset()

    @classmethod
    def all_fp32(cls) -> Assignment:
        return cls(frozenset())

    @classmethod
    def all_fp16(cls, ops: Iterable[OpInfo]) -> Assignment:
        return cls(frozenset(op.name for op in ops if op.compute))

    @classmethod
    def keep_fp32(cls, ops: Iterable[OpInfo], keep: Iterable[str]) -> Assignment:
        """All compute ops in FP16 except the op names in ``keep``."""
        keep = set(keep)
        return cls(frozenset(op.name for op in ops if op.compute and op.name not in keep))

    def is_fp16(self, op_name: str) -> bool:
        return op_name in self.fp16

    def fp16_fraction(self, ops: Sequence[OpInfo]) -> float:
        compute = [op for op in ops if op.compute]
        if not compute:
            return 0.0
        return sum(op.name in self.fp16 for op in compute) / len(compute)

    def fp32_ops(self, ops: Sequence[OpInfo]) -> list[str]:
        return [op.name for op in ops if op.compute and op.name not in self.fp16]


@dataclass
class OpStats:
    """Statistics of one op's output over one pass: max |x| over finite values, NaN and Inf counts."""

    max_abs: float = 0.0
    nan: int = 0
    inf: int = 0
    max_abs_input: float = 0.0
    inputs_finite: bool = True
    reduction_size: int = 0

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0


# --------------------------------------------------------------------------------------------------
# surgery


class InnerModel(nn.Module):
    """The STFT-free part of the model that a compute unit executes.

    ``forward(spec_cac, mix)`` takes the complex-as-channels spectrogram ``[B, 2C, F, T]`` and the
    waveform ``[B, C, L]`` and returns ``(spec_out [B, S, 2C, F, T], wave_out [B, S, C, L])``, with no
    complex tensors and no STFT. ``host_pre``/``host_post`` run on the host in FP32 around it (identity
    by default); a surgery that moves work out of the converted model overrides them. The compute unit
    runs ``forward(*args)`` on the ``args`` of ``host_pre`` and hands its output tuple to ``host_post``,
    which returns ``(spec_out, wave_out)``. A surgery with ``needs_stft = False`` gets ``spec_cac=None``
    in ``host_pre``; its ``host_post`` returns ``spec_out=None`` and the pipeline skips the iSTFT.
    """

    def host_pre(self, spec_cac: torch.Tensor, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        return (spec_cac, mix), None

    def host_post(self, outputs: tuple[torch.Tensor, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs


class Surgery(Plugin):
    """Cuts an HTDemucs model into an :class:`InnerModel` for conversion.

    Example::

        from htx.contracts import Surgery
        from htx.hookspecs import hookimpl

        class Identity(Surgery):
            '''Both branches, unchanged (a copy of full-hybrid).'''
            name = "my-surgery"
            def build(self, model):
                from htx_plugins.surgery.full_hybrid import FullHybridInner
                return FullHybridInner(model)

        @hookimpl
        def htx_register_surgeries(register):
            register(Identity)
    """

    kind = "surgery"
    #: False for surgeries that need no spectrogram (the STFT backend is then skipped).
    needs_stft: ClassVar[bool] = True

    def check(self, model: nn.Module) -> None:
        """Raise :class:`htx.errors.ModelError` when this surgery does not apply to ``model``.

        Look at the architecture only (module types, config attributes), never at weight values:
        ``htx validate`` passes a skeleton built on the meta device (see ``htx.models.model_skeleton``).
        """
        from htx.errors import ModelError

        if type(model).__name__ != "HTDemucs":
            raise ModelError(f"surgery {self.name!r} needs a demucs HTDemucs model, got {type(model).__name__}")

    def build(self, model: nn.Module) -> InnerModel:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# precision


@dataclass
class SearchResult:
    """What a search policy found: the assignment, its log (one dict per evaluation) and the count."""

    assignment: Assignment
    log: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


class SearchContext:
    """Handed to search policies: the op list, an evaluation callback and (optionally) a recorder.

    ``evaluate(assignment)`` runs the trial pipeline under ``assignment`` on every fixture of the run
    and returns metrics aggregated over fixtures (worst case: min ``snr_db``, summed NaN/Inf counts,
    ``within_tol`` only if every fixture is) plus ``per_fixture``. ``record(assignment)`` returns
    :class:`OpStats` per op name from one pass, or raises ``NotImplementedError`` when the compute unit
    cannot record.
    """

    def __init__(
        self,
        ops: list[OpInfo],
        evaluate: Callable[[Assignment], dict[str, Any]],
        record: Callable[[Assignment], dict[str, OpStats]] | None = None,
        targets: Any = None,
    ) -> None:
        self.ops = ops
        self._evaluate = evaluate
        self._record = record
        self.targets = targets
        self.evaluations = 0

    def evaluate(self, assignment: Assignment) -> dict[str, Any]:
        self.evaluations += 1
        return self._evaluate(assignment)

    def record(self, assignment: Assignment) -> dict[str, OpStats]:
        if self._record is None:
            raise NotImplementedError("this compute unit cannot record per-op statistics")
        return self._record(assignment)


class PrecisionPolicy(Plugin):
    """Decides, for each op instance, FP16 or FP32.

    Static policies implement ``select(ops)``. Search policies set ``is_search = True`` and implement
    ``search(ctx)`` returning a :class:`SearchResult`.

    Example (a complete plugin: keep convolutions in FP32, everything else FP16)::

        from htx.contracts import Assignment, PrecisionPolicy
        from htx.hookspecs import hookimpl

        class ConvFP32(PrecisionPolicy):
            '''Everything FP16 except conv ops.'''
            name = "conv-fp32"
            def select(self, ops):
                return Assignment.keep_fp32(ops, [op.name for op in ops if op.type == "conv"])

        @hookimpl
        def htx_register_precision_policies(register):
            register(ConvFP32)
    """

    kind = "precision"
    is_search: ClassVar[bool] = False

    def select(self, ops: list[OpInfo]) -> Assignment:
        raise NotImplementedError

    def search(self, ctx: SearchContext) -> SearchResult:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# stft


class STFTBackend(Plugin):
    """STFT/iSTFT in Demucs conventions.

    ``stft(x, n_fft)`` maps real audio ``[..., L]`` to a complex spectrogram ``[..., n_fft // 2, ceil(L / hop)]``
    (hop ``n_fft // 4``, periodic Hann, ``normalized=True``, reflect padding by ``hop // 2 * 3``, last
    frequency bin dropped, frames ``[2 : 2 + ceil(L / hop)]``). ``istft(z, length, n_fft)`` inverts it.
    Inputs and outputs are torch tensors; a backend may compute with anything inside.

    Example::

        from htx.contracts import STFTBackend
        from htx.hookspecs import hookimpl

        class MySTFT(STFTBackend):
            '''Delegates to the torch backend.'''
            name = "my-stft"
            def stft(self, x, n_fft=4096):
                from htx_plugins.stft.torch_stft import demucs_spec
                return demucs_spec(x, n_fft)
            def istft(self, z, length, n_fft=4096):
                from htx_plugins.stft.torch_stft import demucs_ispec
                return demucs_ispec(z, length, n_fft)

        @hookimpl
        def htx_register_stft_backends(register):
            register(MySTFT)
    """

    kind = "stft"
    #: True when the backend reproduces a platform library it cannot call here (results say so).
    emulated: bool = False

    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        raise NotImplementedError

    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# compute


Forward = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class ComputeUnit(Plugin):
    """Executes an inner model under a precision assignment.

    ``prepare(inner, example_inputs, cache_dir=...)`` runs once per (model, surgery, input shape);
    ``ops(prepared)`` lists its op instances; ``compile(prepared, assignment)`` returns a callable taking
    the inner model's inputs and returning ``(spec_out, wave_out)``. ``record`` (optional) returns
    per-op :class:`OpStats` from one pass. ``runtime`` is what results show (``torch:cpu``,
    ``coreml:emulated``, ...); ``emulated`` is True when latency is not the target device's.

    Example::

        from htx.contracts import ComputeUnit
        from htx.hookspecs import hookimpl

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
        return self.name

    def resources(self) -> dict[str, float]:
        """What a worker needs to run this unit, as Ray resources: ``{"GPU": 1}``, ``{"macos": 1}``.

        ``{}`` (the default) means one CPU. The ``ray`` executor requests these per trial (the config's
        ``executor.ray.resources`` can replace them); other executors ignore them.
        """
        return {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> Any:
        raise NotImplementedError

    def ops(self, prepared: Any) -> list[OpInfo]:
        raise NotImplementedError

    def compile(self, prepared: Any, assignment: Assignment) -> Forward:
        raise NotImplementedError

    def record(self, prepared: Any, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        raise NotImplementedError(f"compute unit {self.name!r} cannot record per-op statistics")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def finite_or_nan(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return x
