"""Plugin base classes and the small value types passed between the core and plugins.

Every plugin kind has an abstract base class here; what a plugin must implement is an
``@abstractmethod``, so a class that misses one is refused when it is registered, naming the method.
A plugin class sets ``name`` (unique within its kind), defines a pydantic ``Params`` model for its
options (a subclass of :class:`Params`: strict, no unknown keys) and documents itself with a complete
example in its docstring.

**Lifetime of a plugin instance.** The trial builder (:mod:`htx.builder`) creates one instance per config
entry and process, the first time a trial needs it, and reuses it for every later trial and search
evaluation of that entry in the process: an STFT backend's transform caches, a compute unit's compiled
programs and a policy's state survive across trials. A parallel run has one instance per entry in each
worker. Instances must therefore not keep per-trial state that changes results.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from htx.errors import ModelError, UnavailableError
from htx.metrics import worst_case
from htx.spectrogram import cac_to_spec, demucs_ispec, demucs_spec, spec_shape, spec_to_cac

__all__ = [
    "Assignment", "ComputeUnit", "Forward", "InnerModel", "OpInfo", "OpStats", "Params", "Plugin",
    "PrecisionPolicy", "STFTBackend", "SearchContext", "SearchPolicy", "SearchResult", "StaticPolicy", "Surgery",
    "cac_to_spec", "demucs_ispec", "demucs_spec", "spec_shape", "spec_to_cac",
]


class Params(BaseModel):
    """Base for plugin options: strict (no coercion: ``"20"`` is not an int, ``true`` is not 1),
    immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Plugin(ABC):  # noqa: B024 - abstract through its kinds (Surgery.build, ...), never registered itself
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

    ``name`` is the unit's own name, stable for a given model, surgery and input shape; ``type`` uses Core
    ML MIL op names (``conv``, ``linear``, ``matmul``, ``softmax``, ...); ``module`` and ``ordinal`` make
    the portable :attr:`key`. ``compute`` is False for reshape-like ops,
    which move data without arithmetic and do not count in ``fp16_op_fraction``.
    """

    name: str
    type: str
    compute: bool = True
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: the PyTorch module the op runs in, relative to the demucs model (``encoder.2.dconv.layers.0``;
    #: ``""`` for the model's own forward), and the op's ordinal among ops of its type in that module
    module: str = ""
    ordinal: int = 0

    @property
    def key(self) -> str:
        """The portable key ``"module|type|ordinal"``: the same op on every compute unit (:mod:`htx.identity`)."""
        return f"{self.module}|{self.type}|{self.ordinal}"


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
    complex tensors and no STFT.

    ``host_pre``/``host_post`` run on the host in FP32 around it (identity by default); a surgery that
    moves work out of the converted model overrides them. **The pipeline** (:class:`htx.pipeline.Pipeline`)
    calls them, never the compute unit: it calls ``host_pre(spec_cac, mix) -> (args, ctx)``, hands
    ``args`` to the compute unit's compiled callable (which runs ``forward(*args)`` only), and passes that
    output tuple and ``ctx`` to ``host_post``, which returns ``(spec_out, wave_out)``. A compute unit's
    ``prepare`` likewise receives ``host_pre``'s ``args`` as its example inputs. A surgery with
    ``needs_stft = False`` gets ``spec_cac=None`` in ``host_pre``; its ``host_post`` returns
    ``spec_out=None`` and the pipeline skips the iSTFT.
    """

    def host_pre(self, spec_cac: torch.Tensor, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        return (spec_cac, mix), None

    def host_post(self, outputs: tuple[torch.Tensor, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs


class Surgery(Plugin):
    """Cuts an HTDemucs model into an :class:`InnerModel` for conversion.

    ``build(model)`` returns an :class:`InnerModel`. The model is a demucs ``HTDemucs``; its own
    ``forward`` runs the STFT inside, so an inner model re-implements the part between the STFT and the
    iSTFT. ``check(model)`` refuses models the surgery does not apply to (architecture only).

    Example (a complete plugin that imports no built-in: the time branch alone, ``needs_stft = False``)::

        from htx.contracts import InnerModel, Surgery
        from htx.hookspecs import hookimpl

        class TimeBranch(InnerModel):
            def __init__(self, model):
                super().__init__()
                self.m = model
            def host_pre(self, spec_cac, mix):  # spec_cac is None: needs_stft is False
                return (mix,), None
            def forward(self, mix):
                m = self.m
                mean, std = mix.mean(dim=(1, 2), keepdim=True), mix.std(dim=(1, 2), keepdim=True)
                xt, saved, lengths = (mix - mean) / (1e-5 + std), [], []
                for enc in m.tencoder:
                    lengths.append(xt.shape[-1])
                    xt = enc(xt)
                    saved.append(xt)
                for dec in m.tdecoder:
                    xt, _ = dec(xt, saved.pop(-1), lengths.pop(-1))
                wave = xt.view(xt.shape[0], len(m.sources), -1, xt.shape[-1]) * std[:, None] + mean[:, None]
                return (wave[..., : mix.shape[-1]],)
            def host_post(self, outputs, ctx):
                return None, outputs[0]

        class MyTimeOnly(Surgery):
            '''The time branch of HTDemucs alone (no spectrogram).'''
            name = "my-time-only"
            needs_stft = False
            def build(self, model):
                return TimeBranch(model)

        @hookimpl
        def htx_register_surgeries(register):
            register(MyTimeOnly)

    ``htx validate`` builds no weights; the pipeline calls ``host_pre``/``host_post`` (see
    :class:`InnerModel`). The built-ins in ``htx_plugins.surgery`` show the hybrid cases.
    """

    kind = "surgery"
    #: False for surgeries that need no spectrogram (the STFT backend is then skipped).
    needs_stft: ClassVar[bool] = True

    def check(self, model: nn.Module) -> None:
        """Raise :class:`htx.errors.ModelError` when this surgery does not apply to ``model``.

        Look at the architecture only (module types, config attributes), never at weight values:
        ``htx validate`` passes a skeleton built on the meta device (see ``htx.models.model_skeleton``).
        """
        if type(model).__name__ != "HTDemucs":
            raise ModelError(f"surgery {self.name!r} needs a demucs HTDemucs model, got {type(model).__name__}")

    @abstractmethod
    def build(self, model: nn.Module) -> InnerModel:
        """The STFT-free inner model for ``model`` (an ``HTDemucs`` in FP32 on the CPU)."""


# --------------------------------------------------------------------------------------------------
# precision


@dataclass
class SearchResult:
    """What a search policy found: the assignment, its log (one dict per evaluation) and the count."""

    assignment: Assignment
    log: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class FirstOrder:
    """First-order FP16 noise estimates for a search (:meth:`SearchContext.first_order_noise`).

    ``powers[fixture][op name]`` is the noise power op ``name`` adds in FP16 alone, relative to the fixture's
    output power (the units of ``10 ** (-snr_db / 10)``), on the first segment of each fixture. ``groups[op
    name]`` names the op whose estimate it carries: itself on the unit that computed it, the source op's
    portable key when the estimate came from another unit (ops of one group rank together). ``unit`` labels
    the unit that computed it, ``seconds`` how long it took.
    """

    powers: dict[str, dict[str, float]]
    groups: dict[str, str]
    unit: str
    seconds: float
    projections: int


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
        progress: Callable[[int, Assignment, dict[str, Any], SearchContext], None] | None = None,
        first_order: Callable[[int, Any], FirstOrder] | None = None,
        siblings: Callable[[Assignment], list[dict[str, dict[str, Any]]]] | None = None,
    ) -> None:
        self.ops = ops
        self._evaluate = evaluate
        self._siblings = siblings
        self._record = record
        self._first_order = first_order
        self.targets = targets
        self.evaluations = 0
        #: called after every evaluation with (count, assignment, metrics, ctx): the run shows search progress
        self.progress = progress
        #: what the policy declared (:meth:`declare`): its criterion and budget, for the progress line
        self.criterion_label: str | None = None
        self.passes: Callable[[dict[str, Any]], bool] | None = None
        self.max_evaluations: int | None = None
        self.deadline: float | None = None  # time.perf_counter() value
        self.best: tuple[int, float | None, float | None] | None = None  # (FP32 ops, worst SNR, cost) verified so far

    def declare(
        self, criterion: str, passes: Callable[[dict[str, Any]], bool],
        max_evaluations: int | None = None, max_seconds: float | None = None,
    ) -> None:
        """A search states its criterion and budget at its start, so progress shows the best verified set
        against the policy's own bar and the budget left."""
        self.criterion_label, self.passes = criterion, passes
        self.max_evaluations = max_evaluations
        self.deadline = time.perf_counter() + max_seconds if max_seconds else None

    def note_best(self, n_fp32: int, snr_db: float | None, cost: float | None = None) -> None:
        """A search reports its best verified set so far, for the progress line (the policy keeps its own answer)."""
        self.best = (n_fp32, snr_db, cost)

    def evaluate(self, assignment: Assignment) -> dict[str, Any]:
        """Metrics of ``assignment``, worst case over every row that will use the answer.

        The search's own pipeline runs first; an assignment that passes the declared criterion (or any, when
        the policy declared none) is then also measured on the sibling rows (``siblings``: the grid's other
        STFT backends, which reuse the answer), and the metrics become the worst case over all of them, so
        an answer verified here passes on every row of the grid. ``rows`` says how many rows were measured."""
        self.evaluations += 1
        metrics = self._evaluate(assignment)
        if self._siblings is not None and (self.passes is None or self.passes(metrics)):
            metrics = worst_case(metrics, *self._siblings(assignment))
        if self.progress is not None:
            self.progress(self.evaluations, assignment, metrics, self)
        return metrics

    def first_order_noise(self, projections: int = 8, unit: Any = None) -> FirstOrder:
        """Per-op FP16 noise estimates from gradients (:meth:`ComputeUnit.fp16_noise`), no evaluations spent.

        ``unit`` (a compute entry such as ``"torch"``) computes them on another unit with the same surgery and
        maps them onto these ops by portable key (:func:`htx.identity.transfer_scores`): the way to rank for a
        unit that gives no gradients. Raises ``NotImplementedError`` when the unit gives none.
        """
        if self._first_order is None:
            raise NotImplementedError("this search context offers no gradients")
        return self._first_order(projections, unit)

    def record(self, assignment: Assignment) -> dict[str, OpStats]:
        if self._record is None:
            raise NotImplementedError("this compute unit cannot record per-op statistics")
        return self._record(assignment)


class PrecisionPolicy(Plugin):
    """Decides, for each op instance, FP16 or FP32. Subclass :class:`StaticPolicy` or :class:`SearchPolicy`.

    The two are separate contracts: the trial builder calls ``select(ops)`` on a static policy and
    ``search(ctx)`` on a search policy; a class registered as a precision policy must subclass one of them.
    """

    kind = "precision"


class StaticPolicy(PrecisionPolicy):
    """A policy that decides from the op list alone: ``select(ops) -> Assignment``.

    Example (a complete plugin: keep convolutions in FP32, everything else FP16)::

        from htx.contracts import Assignment, StaticPolicy
        from htx.hookspecs import hookimpl

        class ConvFP32(StaticPolicy):
            '''Everything FP16 except conv ops.'''
            name = "conv-fp32"
            def select(self, ops):
                return Assignment.keep_fp32(ops, [op.name for op in ops if op.type == "conv"])

        @hookimpl
        def htx_register_precision_policies(register):
            register(ConvFP32)
    """

    @abstractmethod
    def select(self, ops: list[OpInfo]) -> Assignment:
        """The assignment for the prepared model's ``ops`` (in execution order)."""


class SearchPolicy(PrecisionPolicy):
    """A policy that measures: ``search(ctx) -> SearchResult``.

    ``ctx`` (:class:`SearchContext`) gives the ops, ``evaluate(assignment)`` (the trial pipeline on every
    fixture of the run, aggregated worst case) and ``record(assignment)`` (per-op statistics of one pass).
    The search runs once per (surgery, compute, precision) combination; its log is stored with the run.

    Example (a complete plugin: the first all-FP16-but-one-type assignment that passes)::

        from htx.contracts import Assignment, SearchPolicy, SearchResult
        from htx.hookspecs import hookimpl

        class OneTypeFP32(SearchPolicy):
            '''Try keeping each op type FP32 in turn; take the first that meets the SNR target.'''
            name = "one-type-fp32"
            def search(self, ctx):
                for t in dict.fromkeys(op.type for op in ctx.ops if op.compute):
                    a = Assignment.keep_fp32(ctx.ops, [op.name for op in ctx.ops if op.type == t])
                    if (ctx.evaluate(a)["snr_db"] or 0) >= ctx.targets.snr_db:
                        return SearchResult(a, evaluations=ctx.evaluations, summary={"type": t})
                return SearchResult(Assignment.all_fp32(), evaluations=ctx.evaluations)

        @hookimpl
        def htx_register_precision_policies(register):
            register(OneTypeFP32)
    """

    @abstractmethod
    def search(self, ctx: SearchContext) -> SearchResult:
        """Search with ``ctx`` and return the assignment found, its log and the evaluation count."""


# --------------------------------------------------------------------------------------------------
# stft


class STFTBackend(Plugin):
    """STFT/iSTFT in Demucs's exact conventions (``HTDemucs._spec`` / ``_ispec``).

    With ``hop = n_fft // 4`` (1024 for the default 4096) and ``le = ceil(L / hop)``:

    ``stft(x, n_fft) -> z``: real audio ``[..., L]`` (any leading dims) to complex ``[..., n_fft // 2, le]``.

    1. Reflect-pad ``x`` by ``pad = hop // 2 * 3`` on the left and ``pad + le * hop - L`` on the right
       (when ``L`` is not longer than the pad, zero-pad first so reflection is possible, as demucs's
       ``pad1d``).
    2. ``center=True``: reflect-pad by another ``n_fft // 2`` on each side, then frame every ``hop`` samples.
    3. Each frame times the periodic Hann window, ``rfft``, scaled by ``1 / sqrt(n_fft)`` (``normalized=True``).
    4. Drop the last (Nyquist) bin, keeping ``n_fft // 2`` bins, and keep frames ``[2 : 2 + le]``. (Those are
       the frames at ``k * hop`` of the step-1 signal, so a backend may frame that directly.)

    ``istft(z, length, n_fft) -> x``: complex ``[..., n_fft // 2, le]`` back to real ``[..., length]``.

    1. Set the DC bin's imaginary part to 0 (a real signal has none; torch's CUDA inverse would use it).
    2. Append a zero Nyquist bin and two zero frames on each side (``le + 4`` frames).
    3. ``irfft`` each frame, times ``sqrt(n_fft)`` and the window, overlap-add at ``hop``, and divide by the
       overlap-added squared window, **including the windows of the four zero frames** (they add nothing
       to the signal but count in the divisor).
    4. Crop ``n_fft // 2`` (centering) plus ``pad`` samples from the left and keep ``length`` samples.

    Inputs and outputs are torch tensors (complex64 spectrogram, float32 audio); a backend may compute
    with anything inside. A backend whose spectrogram is not ``[..., n_fft // 2, ceil(L / hop)]`` fails
    the trial with an error naming the backend and the expected shape, and each trial records the
    backend's parity (max relative error) against the exact Demucs STFT on its fixture (metric
    ``stft_parity``; worse than ``targets.stft_rtol`` is marked on the leaderboard). docs/stft.md has the
    derivation; :func:`htx.contracts.demucs_spec` / :func:`demucs_ispec` are the reference.

    Example (a complete plugin that delegates to the reference)::

        from htx.contracts import STFTBackend, demucs_ispec, demucs_spec
        from htx.hookspecs import hookimpl

        class MySTFT(STFTBackend):
            '''Delegates to the reference implementation.'''
            name = "my-stft"
            def stft(self, x, n_fft=4096):
                return demucs_spec(x, n_fft)
            def istft(self, z, length, n_fft=4096):
                return demucs_ispec(z, length, n_fft)

        @hookimpl
        def htx_register_stft_backends(register):
            register(MySTFT)
    """

    kind = "stft"
    #: True when the backend reproduces a platform library it cannot call here (results say so).
    emulated: bool = False

    @abstractmethod
    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        """Real ``[..., L]`` -> complex ``[..., n_fft // 2, ceil(L / (n_fft // 4))]``."""

    @abstractmethod
    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        """Complex ``[..., n_fft // 2, T]`` -> real ``[..., length]``."""


# --------------------------------------------------------------------------------------------------
# compute


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

    @abstractmethod
    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> Any:
        """Prepare ``inner`` for ``example_inputs``' shapes (trace, convert, ...); called once per shape."""

    @abstractmethod
    def ops(self, prepared: Any) -> list[OpInfo]:
        """The op instances of ``prepared``, in execution order."""

    @abstractmethod
    def compile(self, prepared: Any, assignment: Assignment) -> Forward:
        """A callable running ``prepared`` under ``assignment``: ``fn(*args) -> output tuple``."""

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

    def placement(self, prepared: Any, assignment: Assignment) -> dict[str, Any]:
        """Where ``assignment`` would run: ``partitions`` (precision segments in execution order), ``ne_ops``
        / ``off_ne_ops`` and ``casts`` where the unit knows them; ``{}`` when it cannot tell."""
        return {}

    def export(self, prepared: Any, assignment: Assignment, path: Path) -> Path:
        """Write a deployable model of ``prepared`` under ``assignment`` to ``path``; units that cannot say so."""
        raise UnavailableError(f"compute unit {self.name!r} cannot export a deployable model")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

