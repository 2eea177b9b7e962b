"""The trial builder: from a grid entry to a runnable pipeline, with every step's result cached.

``surgery.build -> unit.prepare -> policy -> assignment -> pipeline``. A prepared model is built once per
(surgery, compute) pair and a precision assignment once per (surgery, compute, precision) combination; a
failure is cached too, so every trial that needs it reports the same reason. Plugin instances are made once
per config entry (see the lifetime note in :mod:`htx.interfaces.base`): STFT backends keep their transform
caches across trials and search evaluations.

The CLI commands that rebuild one combination (``separate``, ``ops``, ``nan-sources``, ``export``) use
this public API, exactly as a trial does.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from htx.calls import call_plugin, check_callable, check_list_of, optional
from htx.config import PluginEntry
from htx.errors import PluginError, UnavailableError
from htx.failures import deadline
from htx.grid import TrialSpec
from htx.interfaces import ComputeUnit, InnerModel, Plugin, SearchPolicy, StaticPolicy, STFTBackend, Surgery
from htx.measure import Segmenting
from htx.pipeline import Pipeline
from htx.results import check_assignment
from htx.search import run_search
from htx.search_session import SearchSession, fit, write_ops_file
from htx.spectrogram import demucs_spec, spec_to_cac
from htx.types import Assignment, OpInfo
from htx.workspace import Cached, Workspace

if TYPE_CHECKING:
    from htx.plugins import Registry


@dataclass
class Prepared:
    """A surgery's inner model prepared on a compute unit, with its op list."""

    surgery: Surgery
    compute: ComputeUnit
    inner: InnerModel
    prepared: Any
    ops: list[OpInfo]


@dataclass
class AssignmentInfo:
    """A policy's assignment and, for a search, its evaluation count, summary and wall time."""

    assignment: Assignment
    evaluations: int = 0
    search: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class TrialBuilder:
    """Builds and caches the parts of trials over one :class:`~htx.workspace.Workspace`."""

    def __init__(self, workspace: Workspace, registry: Registry, run_id: str | None = None) -> None:
        self.workspace = workspace
        self.cfg = workspace.cfg
        self.registry = registry
        self.run_id = run_id
        self.say = workspace.say
        self._plugins: dict[tuple[str, str], Plugin] = {}
        self._inners: dict[str, Cached[tuple[Surgery, InnerModel]]] = {}
        self._prepared: dict[tuple[str, ...], Cached[Prepared]] = {}
        self._assignments: dict[tuple[str, ...], Cached[AssignmentInfo]] = {}

    # plugins ------------------------------------------------------------------------------------------

    def plugin(self, kind: str, entry: PluginEntry) -> Plugin:
        """The one instance of ``entry``'s plugin in this builder (made on first use)."""
        key = (kind, entry.key())
        if key not in self._plugins:
            self._plugins[key] = self.registry.create(kind, entry.name, entry.params)
        return self._plugins[key]

    def stft(self, entry: PluginEntry, surgery: Surgery) -> STFTBackend | None:
        """The STFT backend of ``entry`` (``None`` when the surgery needs no spectrogram), checked available."""
        if not surgery.needs_stft:
            return None
        stft = self.plugin("stft", entry)
        assert isinstance(stft, STFTBackend)
        ok, why = stft.available()
        if not ok:
            raise UnavailableError(f"stft {stft.label}: {why}")
        return stft

    @property
    def segmenting(self) -> Segmenting:
        loaded = self.workspace.model
        return Segmenting.of(self.cfg, loaded.segment_length, len(loaded.sources))

    # prepared models ----------------------------------------------------------------------------------

    def example_inputs(self, surgery: Surgery) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Seeded ``(spec_cac, mix)`` of the run's batch and segment shape (``spec_cac=None`` without STFT)."""
        loaded = self.workspace.model
        m = loaded.model
        gen = torch.Generator().manual_seed(1234)
        mix = 0.1 * torch.randn(self.cfg.separation.batch_size, m.audio_channels, loaded.segment_length, generator=gen)
        if not surgery.needs_stft:
            return None, mix
        return spec_to_cac(demucs_spec(mix, m.nfft)), mix

    def inner(self, entry: PluginEntry) -> tuple[Surgery, InnerModel]:
        key = entry.key()
        if key not in self._inners:
            cached: Cached[tuple[Surgery, InnerModel]] = Cached()
            try:
                surgery = self.plugin("surgery", entry)
                assert isinstance(surgery, Surgery)
                cached.value = (surgery, call_plugin(surgery, "build", self.workspace.model.model, check=_check_inner))
            except Exception as exc:
                cached.error = exc
            self._inners[key] = cached
        return self._inners[key].get()

    def prepared(self, spec: TrialSpec) -> Prepared:
        """The spec's surgery prepared on its compute unit (once per pair)."""
        key = spec.prepare_key
        if key not in self._prepared:
            cached: Cached[Prepared] = Cached()
            try:
                surgery, inner = self.inner(spec.surgery)
                compute = self.plugin("compute", spec.compute)
                assert isinstance(compute, ComputeUnit)
                ok, why = compute.available()
                if not ok:
                    raise UnavailableError(f"compute {compute.label}: {why}")
                self.say(f"preparing {surgery.label} on {compute.label} ...")
                spec_cac, mix = self.example_inputs(surgery)
                host_args, _ = inner.host_pre(spec_cac, mix)
                with deadline(self.cfg.trial_timeout_s, f"preparing {surgery.label} on {compute.label}"):
                    prepared = call_plugin(compute, "prepare", inner, tuple(host_args), cache_dir=self.workspace.cache_dir)
                    ops = call_plugin(compute, "ops", prepared, check=check_list_of(OpInfo))
                cached.value = Prepared(surgery, compute, inner, prepared, ops)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                cached.error = exc
            self._prepared[key] = cached
        return self._prepared[key].get()

    def forget_prepared(self) -> None:
        """Drop prepared models (a driver that prepared only to fill the disk cache)."""
        self._prepared.clear()

    @property
    def n_prepared(self) -> int:
        return len(self._prepared)

    # pipelines ----------------------------------------------------------------------------------------

    def pipeline(self, prep: Prepared, stft: STFTBackend | None, assignment: Assignment | None,
                 search: bool = False) -> Pipeline:
        """The segment pipeline of ``prep`` under ``assignment`` (``None``: not compiled, for recording);
        ``search``: the unit's fast-to-rebuild forward (``search_forward``) that a search evaluates with."""
        pipe = Pipeline(
            prep.inner, None, stft, self.workspace.model.model.nfft, prep.compute.device,
            sync=prep.compute.synchronize, needs_stft=prep.surgery.needs_stft,
        )
        if assignment is None:
            return pipe
        if search:
            pipe.forward = call_plugin(prep.compute, "search_forward", prep.prepared, assignment, check=check_callable)
            return pipe
        # a unit that compiles graphs may take the whole segment path, STFT and iSTFT included
        in_graph = call_plugin(stft, "in_graph", check=_check_in_graph) if stft is not None else None
        return pipe.compile_with(
            in_graph,
            lambda wrap: call_plugin(prep.compute, "compile_segment", prep.prepared, assignment, wrap,
                                     check=optional(check_callable)),
            lambda: call_plugin(prep.compute, "compile", prep.prepared, assignment, check=check_callable))

    def pipeline_for(self, spec: TrialSpec) -> tuple[Pipeline, Prepared, AssignmentInfo]:
        """The pipeline one trial of ``spec`` runs (prepared model, assignment, STFT backend)."""
        prep = self.prepared(spec)
        stft = self.stft(spec.stft, prep.surgery)
        ainfo = self.assignment(spec)
        return self.pipeline(prep, stft, ainfo.assignment), prep, ainfo

    # searches -----------------------------------------------------------------------------------------

    def session(self, spec: TrialSpec, prep: Prepared | None = None) -> SearchSession:
        """The search session of ``spec``'s combination (evaluation, recording, first-order noise, logs)."""
        return SearchSession(self, spec, prep if prep is not None else self.prepared(spec))

    # assignments --------------------------------------------------------------------------------------

    def is_search(self, spec: TrialSpec) -> bool:
        return issubclass(self.registry.get("precision", spec.precision.name), SearchPolicy)

    def assignment(self, spec: TrialSpec) -> AssignmentInfo:
        """The spec's precision assignment (a search runs once per combination)."""
        key = spec.combo_key
        if key not in self._assignments:
            cached: Cached[AssignmentInfo] = Cached()
            try:
                cached.value = self._choose(spec)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                cached.error = exc
            self._assignments[key] = cached
        return self._assignments[key].get()

    def _choose(self, spec: TrialSpec) -> AssignmentInfo:
        prep = self.prepared(spec)
        policy = self.plugin("precision", spec.precision)
        t0 = time.perf_counter()
        with deadline(self.cfg.trial_timeout_s, f"precision policy {policy.label}"):
            if isinstance(policy, SearchPolicy):
                self.workspace.load()  # a search measures on every fixture; a worker may hold only its chunk's
                self.say(fit(f"searching with {policy.label} ..."))
                session = self.session(spec, prep)
                result = run_search(policy, session.context())
                log_path = session.write_log(policy, result)
                if result.interrupted:
                    self.say(f"search {policy.label} interrupted: keeping its best verified set "
                             f"({len(result.fp32_ops)} FP32 ops); log {log_path}")
                info = AssignmentInfo(result.assignment, result.evaluations, {**result.stored(), "log": str(log_path)})
            else:
                assert isinstance(policy, StaticPolicy)
                info = AssignmentInfo(call_plugin(policy, "select", prep.ops, check=check_assignment))
        info.seconds = time.perf_counter() - t0
        unknown = set(info.assignment.fp16) - {op.name for op in prep.ops}
        if unknown:
            raise PluginError(f"precision {policy.label} assigned unknown op names: {sorted(unknown)[:5]}")
        return info

    # what a trial stores about its assignment ---------------------------------------------------------

    def ops_file(self, spec: TrialSpec, prep: Prepared) -> Path:
        return write_ops_file(self, spec, prep)

    @staticmethod
    def assignment_info(prep: Prepared, assignment: Assignment) -> dict[str, Any]:
        return {
            "fp32_types": dict(Counter(op.type for op in prep.ops if op.compute and not assignment.is_fp16(op.name))),
            "fp16_types": dict(Counter(op.type for op in prep.ops if op.compute and assignment.is_fp16(op.name))),
        }


def _check_inner(value: Any, where: str) -> InnerModel:
    if not isinstance(value, InnerModel):
        raise PluginError(f"{where} returned {type(value).__name__}, expected an htx InnerModel (an nn.Module subclass of it)")
    return value



def _check_in_graph(value: Any, where: str) -> Any:
    """``STFTBackend.in_graph`` returns None or a pair of callables."""
    if value is None or (isinstance(value, tuple) and len(value) == 2 and all(callable(f) for f in value)):
        return value
    raise PluginError(f"{where} returned {type(value).__name__}, expected None or a (stft, istft) pair of callables")


__all__ = ["AssignmentInfo", "Prepared", "TrialBuilder"]
