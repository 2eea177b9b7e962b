"""The runner: builds what trials share once, runs each trial in isolation and records it.

A trial that raises, times out (``trial_timeout_s``), runs out of memory or produces non-finite output
is recorded as ``failed`` with its reason; a plugin that cannot run here gives ``unavailable`` rows.
The run goes on either way, and each finished trial is committed to the store at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htx import __version__
from htx.config import ExperimentConfig, PluginEntry
from htx.contracts import (
    Assignment,
    ComputeUnit,
    OpInfo,
    PrecisionPolicy,
    SearchContext,
    STFTBackend,
    Surgery,
)
from htx.errors import HtxError, UnavailableError
from htx.fixtures import Fixture, load_fixture
from htx.grid import TrialSpec, expand_grid
from htx.metrics import accuracy, percentiles, separation_quality
from htx.models import LoadedModel, load_model
from htx.pipeline import Pipeline, spec_to_cac
from htx.plugins import Registry
from htx.reference import get_reference
from htx.separation import separate
from htx.store import Store, TrialRecord


class TrialTimeout(Exception):
    pass


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


@dataclass
class _Cached:
    """A value computed once and shared by trials, or the failure that every such trial reports."""

    value: Any = None
    error: BaseException | None = None
    reason: str | None = None
    unavailable: bool = False

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class Prepared:
    surgery: Surgery
    compute: ComputeUnit
    inner: Any
    prepared: Any
    ops: list[OpInfo]


@dataclass
class AssignmentInfo:
    assignment: Assignment
    evaluations: int = 0
    search: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def aggregate(per_fixture: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worst case over fixtures: min SNR, max diffs, summed NaN/Inf, within_tol only if all are."""
    snrs = [m["snr_db"] for m in per_fixture.values() if m.get("snr_db") is not None]
    return {
        "snr_db": min(snrs) if snrs else None,
        "max_abs_diff": max((m["max_abs_diff"] for m in per_fixture.values()), default=0.0),
        "nan_count": sum(m["nan_count"] for m in per_fixture.values()),
        "inf_count": sum(m["inf_count"] for m in per_fixture.values()),
        "within_tol": all(m["within_tol"] for m in per_fixture.values()),
        "finite": all(m["nan_count"] == 0 and m["inf_count"] == 0 for m in per_fixture.values()),
        "sdr_delta_db": min((m["sdr_delta_db"] for m in per_fixture.values() if m.get("sdr_delta_db") is not None), default=None),
        "per_fixture": per_fixture,
    }


class Runner:
    """Runs an experiment config against a store. One instance per run."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        registry: Registry,
        store: Store | None,
        config_path: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.store = store
        self.config_path = config_path
        self.on_progress = on_progress or (lambda desc, done, total: None)
        self.say = on_message or (lambda msg: None)
        self.cache_dir = Path(cfg.store.cache_dir)
        self.loaded: LoadedModel | None = None
        self.fixtures: dict[int, _Cached] = {}
        self.references: dict[int, _Cached] = {}
        self.inners: dict[str, _Cached] = {}
        self.prepared: dict[tuple[str, str], _Cached] = {}
        self.assignments: dict[tuple[str, str, str], _Cached] = {}
        self.run_id: str | None = None
        self.references_computed = 0
        #: Fixtures and references the driver already holds, for a worker to take instead of loading them
        #: (``{"fixtures": {i: Fixture}, "errors": {i: reason}, "references": {i: ndarray}, "reference_errors": {i: reason}}``).
        self.shared: dict[str, dict[int, Any]] | None = None
        self.executor_report: Any = None  # set by a parallel executor (htx.executors.ExecutorReport)

    # shared work --------------------------------------------------------------------------------------

    def _plugin(self, kind: str, entry: PluginEntry) -> Any:
        return self.registry.create(kind, entry.name, entry.params)

    def load(self, only: Iterable[int] | None = None) -> None:
        """Load the model, the fixtures and the FP32 references (cached on disk).

        ``only``: the fixture indices to load (a worker loads those of its chunk); ``None`` loads all.
        Fixtures and references already present (or given by :attr:`shared`) are not loaded again.
        """
        if self.loaded is None:
            self.say("loading model ...")
            self.loaded = load_model(self.cfg.model)
            self.say(f"model: {self.loaded.source} (hash {self.loaded.hash})")
            self.check_surgeries()  # before fixtures, references or any trial
        loaded = self.loaded
        wanted = range(len(self.cfg.fixtures)) if only is None else sorted(set(only))
        if self.shared is not None:
            self._take_shared(wanted)
        for i in wanted:
            if i in self.fixtures:
                continue
            entry = self.cfg.fixtures[i]
            cached = _Cached()
            try:
                cached.value = load_fixture(entry, loaded.samplerate, loaded.model.audio_channels, loaded.segment_length)
                for note in cached.value.notes:
                    self.say(f"fixture {entry.label}: {note}")
            except Exception as exc:
                cached.error, cached.reason = exc, f"fixture {entry.label}: {describe_failure(exc)}"
                self.say(f"fixture {entry.label} unusable: {describe_failure(exc)}")
            self.fixtures[i] = cached
        for i in wanted:
            fx = self.fixtures[i]
            if i in self.references or fx.error is not None:
                continue
            cached = _Cached()
            try:
                t0 = time.perf_counter()
                ref, hit = get_reference(loaded, fx.value, self.cfg.separation.overlap, self.cfg.separation.transition_power, self.cache_dir)
                self.references_computed += not hit
                self.say(f"reference {fx.value.name}: {'cached' if hit else f'computed in {time.perf_counter() - t0:.1f} s'}")
                cached.value = ref
            except Exception as exc:
                cached.error, cached.reason = exc, f"reference for {fx.value.name}: {describe_failure(exc)}"
            self.references[i] = cached

    def _take_shared(self, wanted: Iterable[int]) -> None:
        """Fill fixtures and references from :attr:`shared` (a Ray worker: the driver's, via the object store)."""
        shared = self.shared
        for i in wanted:
            if i not in self.fixtures:
                if i in shared["fixtures"]:
                    fixture = shared["fixtures"][i]
                    # Object-store arrays are read-only; trials hand them to torch, which wants writable memory.
                    self.fixtures[i] = _Cached(value=dataclasses.replace(fixture, mix=fixture.mix.copy()))
                elif i in shared["errors"]:
                    reason = shared["errors"][i]
                    self.fixtures[i] = _Cached(error=HtxError(reason), reason=reason)
            if i not in self.references:
                if i in shared["references"]:
                    self.references[i] = _Cached(value=shared["references"][i].copy())
                elif i in shared["reference_errors"]:
                    reason = shared["reference_errors"][i]
                    self.references[i] = _Cached(error=HtxError(reason), reason=reason)

    def check_surgeries(self) -> None:
        """Raise :class:`ModelError` before any trial when a configured surgery does not apply to the model."""
        from htx.applicability import surgery_problems
        from htx.errors import ModelError

        problems = surgery_problems(self.registry, self.cfg.surgery, self.loaded.model)
        if problems:
            raise ModelError(
                f"{len(problems)} surgery(ies) do not apply to {self.loaded.source}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\nRemove them from `surgery:` or use a model they apply to."
            )

    def _example_inputs(self, stft: STFTBackend | None, surgery: Surgery) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.loaded.model
        gen = torch.Generator().manual_seed(1234)
        mix = 0.1 * torch.randn(self.cfg.separation.batch_size, m.audio_channels, self.loaded.segment_length, generator=gen)
        if not surgery.needs_stft:
            return None, mix
        from htx_plugins.stft.torch_stft import demucs_spec

        spec = spec_to_cac(demucs_spec(mix, m.nfft))
        return spec, mix

    def inner_for(self, entry: PluginEntry) -> tuple[Surgery, Any]:
        key = entry.key()
        if key not in self.inners:
            cached = _Cached()
            try:
                surgery = self._plugin("surgery", entry)
                cached.value = (surgery, surgery.build(self.loaded.model))
            except Exception as exc:
                cached.error = exc
            self.inners[key] = cached
        return self.inners[key].get()

    def prepared_for(self, spec: TrialSpec) -> Prepared:
        key = (spec.surgery.key(), spec.compute.key())
        if key not in self.prepared:
            cached = _Cached()
            try:
                surgery, inner = self.inner_for(spec.surgery)
                compute: ComputeUnit = self._plugin("compute", spec.compute)
                ok, why = compute.available()
                if not ok:
                    raise UnavailableError(f"compute {compute.label} unavailable: {why}")
                self.say(f"preparing {surgery.label} on {compute.label} ...")
                spec_cac, mix = self._example_inputs(None, surgery)
                host_args, _ = inner.host_pre(spec_cac, mix)
                with deadline(self.cfg.trial_timeout_s, f"preparing {surgery.label} on {compute.label}"):
                    prepared = compute.prepare(inner, tuple(host_args), cache_dir=self.cache_dir)
                    ops = compute.ops(prepared)
                cached.value = Prepared(surgery, compute, inner, prepared, ops)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                cached.error = exc
            self.prepared[key] = cached
        return self.prepared[key].get()

    def _segment_fn(self, prep: Prepared, forward: Any, stft: STFTBackend | None) -> Pipeline:
        return Pipeline(
            prep.inner, forward, stft, self.loaded.model.nfft, prep.compute.device,
            sync=prep.compute.synchronize, needs_stft=prep.surgery.needs_stft,
        )

    def _separate(self, pipe: Pipeline, fixture: Fixture) -> np.ndarray:
        return self.separate_mix(pipe, fixture.mix)

    def separate_mix(
        self, pipe: Pipeline, mix: np.ndarray, progress: Callable[[int, int], None] | None = None,
        transition: str = "demucs", crossfade_length: int | None = None,
    ) -> np.ndarray:
        """Separate ``mix [C, L]`` (model rate and channels) with ``pipe``, segment by segment -> ``[S, C, L]``."""
        batch = self.cfg.separation.batch_size

        def fn(chunks: torch.Tensor) -> torch.Tensor:
            n = chunks.shape[0]
            if n < batch:  # converted programs have a fixed batch: pad with silence
                chunks = torch.cat([chunks, chunks.new_zeros(batch - n, *chunks.shape[1:])])
            return pipe(chunks)[:n].cpu()

        out = separate(
            fn, torch.from_numpy(mix), self.loaded.segment_length, len(self.loaded.sources),
            self.cfg.separation.overlap, self.cfg.separation.transition_power, batch,
            progress=progress, transition=transition, crossfade_length=crossfade_length,
        )
        return out.numpy()

    def pipeline_for(self, spec: TrialSpec) -> tuple[Pipeline, Prepared, AssignmentInfo]:
        """The segment pipeline one trial of ``spec`` runs (prepared model, assignment, STFT backend)."""
        prep = self.prepared_for(spec)
        stft: STFTBackend | None = None
        if prep.surgery.needs_stft:
            stft = self._plugin("stft", spec.stft)
            ok, why = stft.available()
            if not ok:
                raise UnavailableError(f"stft {stft.label} unavailable: {why}")
        ainfo = self.assignment_for(spec)
        forward = prep.compute.compile(prep.prepared, ainfo.assignment)
        return self._segment_fn(prep, forward, stft), prep, ainfo

    def evaluate_assignment(self, prep: Prepared, stft_entry: PluginEntry, assignment: Assignment) -> dict[str, Any]:
        """Run ``assignment`` on every usable fixture; aggregated metrics (used by search policies)."""
        stft = self._plugin("stft", stft_entry) if prep.surgery.needs_stft else None
        forward = prep.compute.compile(prep.prepared, assignment)
        pipe = self._segment_fn(prep, forward, stft)
        per: dict[str, dict[str, Any]] = {}
        for i, fx in self.fixtures.items():
            if fx.error is not None or self.references[i].error is not None:
                continue
            out = self._separate(pipe, fx.value)
            m = accuracy(self.references[i].value, out, self.cfg.targets.rtol, self.cfg.targets.atol)
            if fx.value.stems is not None:
                m.update(separation_quality(fx.value.stems, out, self.references[i].value, fx.value.stem_names))
            per[fx.value.name] = m
        agg = aggregate(per)
        agg["fp16_op_fraction"] = assignment.fp16_fraction(prep.ops)
        return agg

    def record_assignment(
        self, prep: Prepared, stft_entry: PluginEntry, assignment: Assignment,
        fixture_index: int | None = None, offset: int = 0,
    ) -> dict[str, Any]:
        """Per-op statistics of one pass on one segment: by default the first usable fixture's first one."""
        for i, fx in self.fixtures.items():
            if fx.error is None and fixture_index in (None, i):
                stft = self._plugin("stft", stft_entry) if prep.surgery.needs_stft else None
                pipe = self._segment_fn(prep, None, stft)
                from htx.separation import padded_chunk

                chunk, _ = padded_chunk(torch.from_numpy(fx.value.mix), offset, self.loaded.segment_length)
                batch = chunk[None].repeat(self.cfg.separation.batch_size, 1, 1)
                args, _ = pipe.model_inputs(batch)
                return prep.compute.record(prep.prepared, assignment, tuple(args))
        raise HtxError("no usable fixture to record per-op statistics on")

    def assignment_for(self, spec: TrialSpec) -> AssignmentInfo:
        key = spec.combo_key
        if key not in self.assignments:
            cached = _Cached()
            try:
                prep = self.prepared_for(spec)
                policy: PrecisionPolicy = self._plugin("precision", spec.precision)
                t0 = time.perf_counter()
                with deadline(self.cfg.trial_timeout_s, f"precision policy {policy.label}"):
                    if policy.is_search:
                        self.load()  # a search measures on every fixture; a worker may hold only its chunk's
                        self.say(f"searching with {policy.label} over {len(prep.ops)} ops ...")
                        ctx = SearchContext(
                            prep.ops,
                            evaluate=lambda a: self.evaluate_assignment(prep, spec.stft, a),
                            record=lambda a: self.record_assignment(prep, spec.stft, a),
                            targets=self.cfg.targets,
                        )
                        result = policy.search(ctx)
                        log_path = self._write_search_log(spec, policy, result)
                        info = AssignmentInfo(result.assignment, result.evaluations or ctx.evaluations,
                                              {**result.summary, "log": str(log_path)})
                    else:
                        info = AssignmentInfo(policy.select(prep.ops))
                info.seconds = time.perf_counter() - t0
                unknown = set(info.assignment.fp16) - {op.name for op in prep.ops}
                if unknown:
                    raise HtxError(f"precision {policy.label} assigned unknown op names: {sorted(unknown)[:5]}")
                cached.value = info
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                cached.error = exc
            self.assignments[key] = cached
        return self.assignments[key].get()

    def _write_search_log(self, spec: TrialSpec, policy: PrecisionPolicy, result: Any) -> Path:
        d = Path(self.cfg.store.artifacts_dir) / (self.run_id or "adhoc")
        d.mkdir(parents=True, exist_ok=True)
        name = f"search-{spec.surgery.name}-{spec.compute.name}-{policy.name}-{abs(hash(spec.combo_key)) % 10**8}.json"
        path = d / name
        path.write_text(json.dumps({
            "surgery": spec.surgery.key(), "compute": spec.compute.key(), "precision": spec.precision.key(),
            "evaluations": result.evaluations, "fp32_ops": sorted(set(_all_names(self, spec)) - set(result.assignment.fp16)),
            "summary": result.summary, "log": result.log,
        }, indent=1, default=str))
        return path

    # one trial -----------------------------------------------------------------------------------------

    def run_trial(self, spec: TrialSpec) -> TrialRecord:
        rec = new_record(self.run_id or "", spec)
        t0 = time.perf_counter()
        try:
            self._run_trial(spec, rec)
        except UnavailableError as exc:
            rec.status, rec.reason = "unavailable", f"unavailable: {exc}"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            rec.status, rec.reason = "failed", describe_failure(exc)
            rec.info["traceback"] = traceback.format_exc(limit=8)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rec.finished_at = time.time()
        rec.duration_s = time.perf_counter() - t0
        return rec

    def _run_trial(self, spec: TrialSpec, rec: TrialRecord) -> None:
        fx_cached = self.fixtures[spec.fixture_index]
        if fx_cached.error is not None:
            raise HtxError(fx_cached.reason or str(fx_cached.error))
        fixture: Fixture = fx_cached.value
        ref_cached = self.references[spec.fixture_index]
        if ref_cached.error is not None:
            raise HtxError(ref_cached.reason or str(ref_cached.error))
        reference: np.ndarray = ref_cached.value
        stft: STFTBackend = self._plugin("stft", spec.stft)
        prep = self.prepared_for(spec)
        rec.runtime = prep.compute.runtime
        rec.info["emulated"] = bool(prep.compute.emulated)
        if prep.surgery.needs_stft:
            ok, why = stft.available()
            if not ok:
                raise UnavailableError(f"stft {stft.label} unavailable: {why}")
            rec.info["stft_emulated"] = bool(stft.emulated)
        else:
            stft = None
            rec.info["stft"] = "not used by this surgery"
        ainfo = self.assignment_for(spec)
        assignment = ainfo.assignment
        cfg = self.cfg
        with deadline(cfg.trial_timeout_s, "trial"):
            forward = prep.compute.compile(prep.prepared, assignment)
            pipe = self._segment_fn(prep, forward, stft)
            from htx.separation import padded_chunk

            chunk, _ = padded_chunk(torch.from_numpy(fixture.mix), 0, self.loaded.segment_length)
            batch = chunk[None].repeat(cfg.separation.batch_size, 1, 1)
            if prep.compute.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(prep.compute.device)
            for _ in range(cfg.latency.warmup):
                pipe(batch)
            pipe.times.__init__()
            t_sep = time.perf_counter()
            out = self._separate(pipe, fixture)
            sep_s = time.perf_counter() - t_sep
            pipe.times.__init__()
            for _ in range(cfg.latency.repeats):
                pipe(batch)
        m = accuracy(reference, out, cfg.targets.rtol, cfg.targets.atol)
        if fixture.stems is not None:
            m.update(separation_quality(fixture.stems, out, reference, fixture.stem_names))
        m["fp16_op_fraction"] = assignment.fp16_fraction(prep.ops)
        m["n_ops"] = sum(op.compute for op in prep.ops)
        per_seg = cfg.separation.batch_size
        for stage in ("model", "stft", "istft"):
            samples = getattr(pipe.times, stage)
            if samples:
                p = percentiles([s * 1000.0 / per_seg for s in samples])
                m[f"{stage}_ms"] = p["median"]
                if stage == "model":
                    m["model_ms_p10"], m["model_ms_p90"] = p["p10"], p["p90"]
        m["separate_s"] = sep_s
        m["rtf"] = sep_s / fixture.duration
        if prep.compute.device.type == "cuda":
            m["peak_mem_mb"] = torch.cuda.max_memory_allocated(prep.compute.device) / 2**20
        if ainfo.search:  # search policies show their count, 0 included (magnitude: a record pass only)
            m["evaluations"] = ainfo.evaluations
            m["search_s"] = ainfo.seconds
        rec.metrics = m
        rec.info.update({
            "fp32_types": dict(Counter(op.type for op in prep.ops if op.compute and not assignment.is_fp16(op.name))),
            "fp16_types": dict(Counter(op.type for op in prep.ops if op.compute and assignment.is_fp16(op.name))),
            "fixture_notes": fixture.notes, "segments": math.ceil(fixture.mix.shape[-1] / max(1, int((1 - cfg.separation.overlap) * self.loaded.segment_length))),
        })
        if ainfo.search:
            rec.info["search"] = ainfo.search
        if m["nan_count"] or m["inf_count"]:
            rec.status = "failed"
            rec.reason = f"non-finite output: {m['nan_count']} NaN, {m['inf_count']} Inf"
        else:
            rec.status = "ok"

    # the run -------------------------------------------------------------------------------------------

    def finish_trial(self, rec: TrialRecord) -> None:
        """Commit one finished trial to the store (its own transaction) and report a status other than ok.

        Only the driver calls this: with a parallel executor, records come back from the workers.
        """
        self.store.write_trial(rec)
        if rec.status != "ok":
            self.say(f"{rec.status}: {trial_label(rec)}: {rec.reason}")

    def run(self, resume: str | None = None) -> str:
        specs = expand_grid(self.cfg)
        if resume:
            self.store.get_run(resume)
            self.run_id = resume
            done = self.store.finished_trial_ids(resume)
            self.store.update_run(resume, status="running")
        else:
            self.run_id = self.store.create_run(
                self.cfg.name, self.cfg.model_dump(mode="json"), self.config_path, __version__, platform.node()
            )
            done = set()
        todo = [s for s in specs if s.trial_id not in done]
        self.say(f"run {self.run_id}: {len(specs)} trials ({len(done)} already done)")
        try:
            modules = None  # plugin modules the workers import, for a parallel executor
            if todo and self.cfg.executor.kind != "serial":
                from htx.executors.plan import shipped_plugin_modules

                modules = shipped_plugin_modules(self.registry)
            if modules is not None and self.cfg.executor.kind == "local":
                from htx.executors.local import start_fork_server

                start_fork_server(modules)
            if todo:
                self.load()
                self.store.update_run(self.run_id, model_source=self.loaded.source, model_hash=self.loaded.hash)
            if self.cfg.executor.kind == "serial":
                for n, spec in enumerate(todo):
                    self.on_progress(trial_label(spec), len(done) + n, len(specs))
                    self.finish_trial(self.run_trial(spec))
            elif todo:
                from htx.executors import run_parallel

                run_parallel(self, todo, len(done), len(specs), modules)
            self.on_progress("done", len(specs), len(specs))
        except KeyboardInterrupt:
            self.store.update_run(self.run_id, status="interrupted", finished_at=time.time())
            raise
        except BaseException:
            self.store.update_run(self.run_id, status="failed", finished_at=time.time())
            raise
        self.store.update_run(self.run_id, status="finished", finished_at=time.time())
        return self.run_id


def new_record(run_id: str, spec: TrialSpec, status: str = "failed", reason: str | None = None) -> TrialRecord:
    """The record of ``spec`` before it runs (executors also use it for trials whose worker died)."""
    return TrialRecord(
        run_id=run_id, trial_id=spec.trial_id, idx=spec.idx, surgery=spec.surgery.key(),
        precision=spec.precision.key(), stft=spec.stft.key(), compute=spec.compute.key(), fixture=spec.fixture,
        status=status, reason=reason, started_at=time.time(),
    )


def trial_label(trial: TrialSpec | TrialRecord) -> str:
    """``surgery x precision x stft x compute x fixture`` for progress and log lines."""
    if isinstance(trial, TrialSpec):
        parts = (trial.surgery.key(), trial.precision.key(), trial.stft.key(), trial.compute.key(), trial.fixture)
    else:
        parts = (trial.surgery, trial.precision, trial.stft, trial.compute, trial.fixture)
    return " x ".join(parts)


def _all_names(runner: Runner, spec: TrialSpec) -> list[str]:
    try:
        return [op.name for op in runner.prepared_for(spec).ops if op.compute]
    except Exception:
        return []
