"""The trial builder: from a grid entry to a runnable pipeline, with every step's result cached.

``surgery.build -> unit.prepare -> policy -> assignment -> pipeline``. A prepared model is built once per
(surgery, compute) pair and a precision assignment once per (surgery, compute, precision) combination; a
failure is cached too, so every trial that needs it reports the same reason. Plugin instances are made once
per config entry (see the lifetime note in :mod:`htx.contracts`): STFT backends keep their transform
caches across trials and search evaluations.

The CLI commands that rebuild one combination (``separate``, ``ops``, ``nan-sources``, ``export``) use
this public API, exactly as a trial does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from htx.config import PluginEntry
from htx.contracts import (
    Assignment,
    ComputeUnit,
    FirstOrder,
    InnerModel,
    OpInfo,
    OpStats,
    Plugin,
    SearchContext,
    SearchPolicy,
    SearchResult,
    StaticPolicy,
    STFTBackend,
    Surgery,
)
from htx.errors import HtxError, UnavailableError
from htx.failures import deadline
from htx.grid import TrialSpec
from htx.identity import transfer_scores
from htx.measure import Segmenting, measure
from htx.metrics import aggregate
from htx.pipeline import Pipeline
from htx.spectrogram import demucs_ispec, demucs_spec, spec_to_cac
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


def search_log_name(spec: TrialSpec, policy: Plugin) -> str:
    """A file name for a combination's search log, the same in every process (a content hash, not ``hash()``)."""
    digest = hashlib.sha1("|".join(spec.combo_key).encode()).hexdigest()[:10]
    return f"search-{spec.surgery.name}-{spec.compute.name}-{policy.name}-{digest}.json"


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
            raise UnavailableError(f"stft {stft.label} unavailable: {why}")
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
                cached.value = (surgery, surgery.build(self.workspace.model.model))
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
                    raise UnavailableError(f"compute {compute.label} unavailable: {why}")
                self.say(f"preparing {surgery.label} on {compute.label} ...")
                spec_cac, mix = self.example_inputs(surgery)
                host_args, _ = inner.host_pre(spec_cac, mix)
                with deadline(self.cfg.trial_timeout_s, f"preparing {surgery.label} on {compute.label}"):
                    prepared = compute.prepare(inner, tuple(host_args), cache_dir=self.workspace.cache_dir)
                    ops = compute.ops(prepared)
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

    def pipeline(self, prep: Prepared, stft: STFTBackend | None, assignment: Assignment | None) -> Pipeline:
        """The segment pipeline of ``prep`` under ``assignment`` (``None``: not compiled, for recording)."""
        forward = prep.compute.compile(prep.prepared, assignment) if assignment is not None else None
        return Pipeline(
            prep.inner, forward, stft, self.workspace.model.model.nfft, prep.compute.device,
            sync=prep.compute.synchronize, needs_stft=prep.surgery.needs_stft,
        )

    def pipeline_for(self, spec: TrialSpec) -> tuple[Pipeline, Prepared, AssignmentInfo]:
        """The pipeline one trial of ``spec`` runs (prepared model, assignment, STFT backend)."""
        prep = self.prepared(spec)
        stft = self.stft(spec.stft, prep.surgery)
        ainfo = self.assignment(spec)
        return self.pipeline(prep, stft, ainfo.assignment), prep, ainfo

    # evaluations (what search policies call) ---------------------------------------------------------

    def evaluate(self, prep: Prepared, stft_entry: PluginEntry, assignment: Assignment) -> dict[str, Any]:
        """``assignment`` on every usable fixture, aggregated worst case (a search evaluation)."""
        agg = aggregate(self._measure_fixtures(prep, stft_entry, assignment))
        agg["fp16_op_fraction"] = assignment.fp16_fraction(prep.ops)
        return agg

    def _measure_fixtures(self, prep: Prepared, stft_entry: PluginEntry, assignment: Assignment) -> dict[str, dict[str, Any]]:
        pipe = self.pipeline(prep, self.stft(stft_entry, prep.surgery), assignment)
        items = [(fx, ref) for _, fx, ref in self.workspace.usable()]
        t = self.cfg.targets
        return measure(pipe, items, self.segmenting, t.rtol, t.atol)

    def sibling_stfts(self, spec: TrialSpec, prep: Prepared) -> list[PluginEntry]:
        """The grid's other STFT backends: their trials reuse ``spec``'s assignment (one search per
        combination), so a search must pass through them too. None for a surgery without an STFT."""
        if not prep.surgery.needs_stft:
            return []
        return [e for e in self.cfg.stft if e.key() != spec.stft.key()]

    def evaluate_siblings(self, prep: Prepared, entries: list[PluginEntry], assignment: Assignment) -> list[dict[str, dict[str, Any]]]:
        """Per-fixture metrics of ``assignment`` through each of ``entries``' STFT backends (one dict per backend)."""
        return [self._measure_fixtures(prep, entry, assignment) for entry in entries]

    def record(
        self, prep: Prepared, stft_entry: PluginEntry, assignment: Assignment,
        fixture_index: int | None = None, offset: int = 0,
    ) -> dict[str, OpStats]:
        """Per-op statistics of one pass on one segment: by default the first usable fixture's first one."""
        for i, fx in self.workspace.fixtures.items():
            if fx.ok and fixture_index in (None, i):
                pipe = self.pipeline(prep, self.stft(stft_entry, prep.surgery), None)
                args, _ = pipe.model_inputs(self.segmenting.first_batch(fx.get().mix, offset))
                return prep.compute.record(prep.prepared, assignment, tuple(args))
        raise HtxError("no usable fixture to record per-op statistics on")

    def first_order(self, spec: TrialSpec, prep: Prepared, projections: int, unit: Any = None) -> FirstOrder:
        """Per-op first-order FP16 noise on the first segment of every usable fixture (see
        :meth:`htx.contracts.SearchContext.first_order_noise`); with ``unit``, computed on that compute entry
        with the same surgery and carried onto ``prep``'s ops by portable key."""
        t0 = time.perf_counter()
        src = prep
        if unit is not None:
            entry = PluginEntry.model_validate(unit)
            if entry.key() != spec.compute.key():
                entries = tuple(entry if a == "compute" else e for a, e in zip(spec.axes, spec.entries))
                src = self.prepared(replace(spec, entries=entries))
        powers: dict[str, dict[str, float]] = {}
        pipe = self.pipeline(src, self.stft(spec.stft, src.surgery), None)
        for _, fx, _ in self.workspace.usable():
            batch = self.segmenting.first_batch(fx.mix)
            args, ctx = pipe.model_inputs(batch)

            def post(outs: tuple[torch.Tensor, ...], ctx: Any = ctx, length: int = batch.shape[-1]) -> torch.Tensor:
                return pipe.waveform(outs, ctx, length, istft=demucs_ispec)  # torch's iSTFT: differentiable

            powers[fx.name] = src.compute.fp16_noise(src.prepared, tuple(args), post, projections)
        if src is prep:
            groups = {op.name: op.name for op in prep.ops if op.compute}
        else:  # carry the estimates onto this unit's ops by portable key; an op takes its source op's group
            carried = {f: transfer_scores(src.ops, p, prep.ops) for f, p in powers.items()}
            any_f = next(iter(carried.values()), {})
            groups = {name: key for name, (key, _) in any_f.items()}
            powers = {f: {name: sc for name, (_, sc) in c.items()} for f, c in carried.items()}
        return FirstOrder(powers, groups, src.compute.label, time.perf_counter() - t0, projections)

    def search_context(self, spec: TrialSpec, prep: Prepared) -> SearchContext:
        siblings = self.sibling_stfts(spec, prep)
        return SearchContext(
            prep.ops,
            evaluate=lambda a: self.evaluate(prep, spec.stft, a),
            record=lambda a: self.record(prep, spec.stft, a),
            targets=self.cfg.targets,
            progress=self._progress(spec, prep),
            first_order=lambda k, unit: self.first_order(spec, prep, k, unit),
            siblings=(lambda a: self.evaluate_siblings(prep, siblings, a)) if siblings else None,
        )

    def _progress(self, spec: TrialSpec, prep: Prepared) -> Any:
        """A progress line per evaluation (at most one every 2 s): count, this FP32 set and its worst SNR, the
        best verified set so far against the policy's declared criterion, and the budget left."""
        n = sum(op.compute for op in prep.ops)
        t0 = time.perf_counter()
        state: dict[str, Any] = {"last": 0.0, "best": None}
        bar = self.cfg.targets.snr_db

        def report(count: int, assignment: Assignment, metrics: dict[str, Any], ctx: SearchContext) -> None:
            snr = metrics.get("snr_db")
            fp32 = n - len(assignment.fp16)
            if ctx.passes is not None:
                ok, label = ctx.passes(metrics), ctx.criterion_label
            else:  # a policy that declared nothing: judge by the run's targets
                ok, label = bool(metrics.get("finite")) and snr is not None and snr >= bar, f"targets.snr_db {bar:g}"
            if ok and (state["best"] is None or fp32 < state["best"][0]):
                state["best"] = (fp32, snr, None)
            best = ctx.best or state["best"]
            now = time.perf_counter()
            if now - state["last"] >= 2.0 or count == 1:
                state["last"] = now
                if best:
                    cost = "" if best[2] is None or best[2] == best[0] else f", cost {best[2]:g}"
                    best_s = f"best verified: {best[0]} FP32 ops{cost} at {'n/a' if best[1] is None else f'{best[1]:.1f}'} dB"
                else:
                    best_s = "none verified yet"
                left = []
                if ctx.max_evaluations is not None:
                    left.append(f"{max(0, ctx.max_evaluations - count)} evaluations")
                if ctx.deadline is not None:
                    left.append(f"{max(0.0, ctx.deadline - now):.0f} s")
                budget = f"; budget left: {', '.join(left)}" if left else ""
                snr_s = "n/a" if snr is None else f"{snr:.1f} dB"
                self.say(f"  {spec.precision.key()}: evaluation {count} ({now - t0:.0f} s): {fp32}/{n} FP32 ops, "
                         f"worst SNR {snr_s}; {best_s} ({label}){budget}")

        return report

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
                self.say(f"searching with {policy.label} over {len(prep.ops)} ops ...")
                ctx = self.search_context(spec, prep)
                result = policy.search(ctx)
                log_path = self.write_search_log(spec, policy, prep, result)
                if result.summary.get("interrupted"):
                    self.say(f"search {policy.label} interrupted: keeping its best verified set "
                             f"({len(prep.ops) - len(result.assignment.fp16)} FP32 ops); log {log_path}")
                info = AssignmentInfo(result.assignment, result.evaluations or ctx.evaluations,
                                      {**result.summary, "log": str(log_path)})
            else:
                assert isinstance(policy, StaticPolicy)
                info = AssignmentInfo(policy.select(prep.ops))
        info.seconds = time.perf_counter() - t0
        unknown = set(info.assignment.fp16) - {op.name for op in prep.ops}
        if unknown:
            raise HtxError(f"precision {policy.label} assigned unknown op names: {sorted(unknown)[:5]}")
        return info

    def ops_file(self, spec: TrialSpec, prep: Prepared) -> Path:
        """The prepared model's op list (name, portable key, module, type, compute) in execution order, written
        once per (surgery, compute) pair beside the run's search logs: what ``htx report`` draws its map from."""
        d = Path(self.cfg.store.artifacts_dir) / (self.run_id or "adhoc")
        path = d / f"ops-{hashlib.sha1(repr(spec.prepare_key).encode()).hexdigest()[:10]}.json"
        if not path.exists():
            d.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({
                "surgery": spec.surgery.key(), "compute": spec.compute.key(),
                "ops": [{"name": op.name, "key": op.key, "module": op.module, "type": op.type, "compute": op.compute}
                        for op in prep.ops],
            }))
            os.replace(tmp, path)  # atomic: parallel workers may write the same file
        return path

    def write_search_log(self, spec: TrialSpec, policy: Plugin, prep: Prepared, result: SearchResult) -> Path:
        d = Path(self.cfg.store.artifacts_dir) / (self.run_id or "adhoc")
        d.mkdir(parents=True, exist_ok=True)
        path = d / search_log_name(spec, policy)
        path.write_text(json.dumps({
            "surgery": spec.surgery.key(), "compute": spec.compute.key(), "precision": spec.precision.key(),
            "evaluations": result.evaluations, "fp32_ops": result.assignment.fp32_ops(prep.ops),
            "fp32_keys": [op.key for op in prep.ops if op.compute and op.name not in result.assignment.fp16],
            "summary": result.summary, "log": result.log,
        }, indent=1, default=str))
        return path

    # what a trial stores about its assignment ---------------------------------------------------------

    @staticmethod
    def assignment_info(prep: Prepared, assignment: Assignment) -> dict[str, Any]:
        return {
            "fp32_types": dict(Counter(op.type for op in prep.ops if op.compute and not assignment.is_fp16(op.name))),
            "fp16_types": dict(Counter(op.type for op in prep.ops if op.compute and assignment.is_fp16(op.name))),
        }


__all__ = ["AssignmentInfo", "Prepared", "TrialBuilder", "search_log_name"]
