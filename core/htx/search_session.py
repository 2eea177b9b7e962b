"""The search session of one combination: evaluation on every fixture and row, per-op recording, first-order
noise (carried between units by portable key), progress lines, and the search log and op files.

The trial builder makes the parts (prepared model, pipelines); a :class:`SearchSession` measures with them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from htx.config import PluginEntry
from htx.errors import HtxError
from htx.grid import TrialSpec
from htx.identity import transfer_scores
from htx.interfaces.base import Plugin
from htx.measure import measure
from htx.metrics import aggregate
from htx.pipeline import Pipeline
from htx.results import FirstOrder, SearchResult, SearchStep
from htx.search import SearchContext
from htx.spectrogram import demucs_ispec
from htx.types import Assignment, OpStats

if TYPE_CHECKING:
    from htx.builder import Prepared, TrialBuilder

#: The least time between two search progress lines.
PROGRESS_EVERY_S = 2.0


#: The width a progress line must fit (a 120-column terminal).
LINE_WIDTH = 120


def fit(line: str, width: int = LINE_WIDTH) -> str:
    """``line`` cut to ``width`` characters (with an ellipsis) so it never wraps in a terminal of that width."""
    return line if len(line) <= width else line[: width - 1] + "…"


def search_log_name(spec: TrialSpec, policy: Plugin) -> str:
    """A file name for a combination's search log, the same in every process (a content hash, not ``hash()``)."""
    digest = hashlib.sha1("|".join(spec.combo_key).encode()).hexdigest()[:10]
    return f"search-{spec.surgery.name}-{spec.compute.name}-{policy.name}-{digest}.json"


class SearchSession:
    """Measures assignments of one (surgery, compute, precision, stft) combination for a search."""

    def __init__(self, builder: TrialBuilder, spec: TrialSpec, prep: Prepared) -> None:
        self.builder, self.spec, self.prep = builder, spec, prep
        self.cfg = builder.cfg

    # measuring --------------------------------------------------------------------------------------------

    def evaluate(self, assignment: Assignment, stft_entry: PluginEntry | None = None, timed: bool = False) -> dict[str, Any]:
        """``assignment`` on every usable fixture through the session's STFT (or ``stft_entry``'s), worst case;
        ``timed``: latency measured as a trial measures it (the config's ``latency`` warm-up and repeats)."""
        agg = aggregate(self.measure_fixtures(assignment, stft_entry, timed))
        agg["fp16_op_fraction"] = assignment.fp16_fraction(self.prep.ops)
        return agg

    def measure_fixtures(self, assignment: Assignment, stft_entry: PluginEntry | None = None,
                         timed: bool = False) -> dict[str, dict[str, Any]]:
        b = self.builder
        pipe = b.pipeline(self.prep, b.stft(stft_entry or self.spec.stft, self.prep.surgery), assignment, search=True)
        items = [(fx, ref) for _, fx, ref in b.workspace.usable()]
        t, lat = self.cfg.targets, self.cfg.latency
        return measure(pipe, items, b.segmenting, t.rtol, t.atol, latency=(lat.warmup, lat.repeats) if timed else None,
                       sync_device=self.prep.compute.device)

    def evaluate_forward(self, forward: Any, timed: bool = False) -> dict[str, Any]:
        """Any callable with the compiled forward's signature (``fn(*args) -> output tuple``: another tool's model
        of this inner model) through this combination's pipeline on every usable fixture, worst case."""
        b = self.builder
        pipe = Pipeline(self.prep.inner, forward, b.stft(self.spec.stft, self.prep.surgery), b.workspace.model.model.nfft,
                        self.prep.compute.device, sync=self.prep.compute.synchronize, needs_stft=self.prep.surgery.needs_stft)
        items = [(fx, ref) for _, fx, ref in b.workspace.usable()]
        t, lat = self.cfg.targets, self.cfg.latency
        return aggregate(measure(pipe, items, b.segmenting, t.rtol, t.atol, latency=(lat.warmup, lat.repeats) if timed else None,
                                 sync_device=self.prep.compute.device))

    def sibling_stfts(self) -> list[PluginEntry]:
        """The grid's other STFT backends: their trials reuse this combination's assignment (one search per
        combination), so a search must pass through them too. None for a surgery without an STFT."""
        if not self.prep.surgery.needs_stft:
            return []
        return [e for e in self.cfg.stft if e.key() != self.spec.stft.key()]

    def evaluate_siblings(self, entries: list[PluginEntry], assignment: Assignment) -> list[dict[str, dict[str, Any]]]:
        """Per-fixture metrics of ``assignment`` through each of ``entries``' STFT backends (one dict per backend)."""
        return [self.measure_fixtures(assignment, entry) for entry in entries]

    def record(self, assignment: Assignment, fixture_index: int | None = None, offset: int = 0) -> dict[str, OpStats]:
        """Per-op statistics of one pass on one segment: by default the first usable fixture's first one."""
        b = self.builder
        for i, fx in b.workspace.fixtures.items():
            if fx.ok and fixture_index in (None, i):
                pipe = b.pipeline(self.prep, b.stft(self.spec.stft, self.prep.surgery), None)
                args, _ = pipe.model_inputs(b.segmenting.first_batch(fx.get().mix, offset))
                return self.prep.compute.record(self.prep.prepared, assignment, tuple(args))
        raise HtxError("no usable fixture to record per-op statistics on")

    def first_order(self, projections: int, unit: Any = None) -> FirstOrder:
        """Per-op first-order FP16 noise on the first segment of every usable fixture (see
        :meth:`htx.search.SearchContext.first_order_noise`); with ``unit``, computed on that compute entry with
        the same surgery and carried onto this unit's ops by portable key."""
        b, spec, prep = self.builder, self.spec, self.prep
        t0 = time.perf_counter()
        src = prep
        if unit is not None:
            entry = PluginEntry.model_validate(unit)
            if entry.key() != spec.compute.key():
                entries = tuple(entry if a == "compute" else e for a, e in zip(spec.axes, spec.entries))
                src = b.prepared(replace(spec, entries=entries))
        powers: dict[str, dict[str, float]] = {}
        pipe = b.pipeline(src, b.stft(spec.stft, src.surgery), None)
        for _, fx, _ in b.workspace.usable():
            batch = b.segmenting.first_batch(fx.mix)
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

    def context(self) -> SearchContext:
        """The :class:`SearchContext` a search policy of this combination gets."""
        siblings = self.sibling_stfts()
        return SearchContext(
            self.prep.ops,
            evaluate=self.evaluate,
            timed_evaluate=lambda a: self.evaluate(a, timed=True),
            record=self.record,
            targets=self.cfg.targets,
            progress=self._progress(),
            first_order=self.first_order,
            siblings=(lambda a: self.evaluate_siblings(siblings, a)) if siblings else None,
        )

    # showing and keeping ------------------------------------------------------------------------------------

    def _progress(self) -> Any:
        """Search progress that fits 120 columns: once, the criterion, the budget and the compute-op count; then a
        line per evaluation (at most one every 2 s): this set's FP32 ops and worst SNR, the best verified set so
        far (against the declared criterion) and the budget left."""
        n = sum(op.compute for op in self.prep.ops)
        name = self.spec.precision.name
        state = {"last": 0.0}

        def report(ctx: SearchContext, step: SearchStep) -> None:
            now = time.perf_counter()
            if ctx.spent == 1:
                budget = [f"{ctx.max_evaluations} evaluations"] if ctx.max_evaluations is not None else []
                budget += [f"{ctx.deadline - ctx.t0:.0f} s"] if ctx.deadline is not None else []
                self.builder.say(fit(f"  {name}: criterion {ctx.criterion} over {n} compute ops; budget "
                                     f"{' / '.join(budget) or 'none'}; FP32 counts below are of those {n}"))
            elif now - state["last"] < PROGRESS_EVERY_S:
                return
            state["last"] = now
            if ctx.best is not None:
                a, ev = ctx.best
                n32, cost = ctx.n_fp32(a), ctx.cost(a, ev)
                cost_s = "" if cost == n32 else f", cost {cost:g}"
                best_s = f"best {n32} FP32{cost_s} at {'n/a' if ev.snr_db is None else f'{ev.snr_db:.1f} dB'}"
            else:
                best_s = "none verified yet"
            left = []
            if ctx.max_evaluations is not None:
                left.append(f"{max(0, ctx.max_evaluations - ctx.spent)} evals")
            if ctx.deadline is not None:
                left.append(f"{max(0.0, ctx.deadline - now):.0f} s")
            snr_s = "n/a" if step.snr_db is None else f"{step.snr_db:.1f} dB"
            self.builder.say(fit(f"  {name} eval {ctx.spent} ({now - ctx.t0:.0f} s): {step.n_fp32} FP32, {snr_s} "
                                 f"{'passed' if step.passed else 'failed'}; {best_s}" + (f"; left {', '.join(left)}" if left else "")))

        return report

    def write_log(self, policy: Plugin, result: SearchResult) -> Path:
        """The search log (answer, summary, every step) beside the run's artifacts."""
        d = Path(self.cfg.store.artifacts_dir) / (self.builder.run_id or "adhoc")
        d.mkdir(parents=True, exist_ok=True)
        path = d / search_log_name(self.spec, policy)
        path.write_text(json.dumps({
            "surgery": self.spec.surgery.key(), "compute": self.spec.compute.key(), "precision": self.spec.precision.key(),
            "evaluations": result.evaluations, "fp32_ops": result.fp32_ops, "fp32_keys": result.fp32_keys,
            "summary": result.stored(), "log": [s.stored() for s in result.log],
        }, indent=1, default=str))
        return path


def write_ops_file(builder: TrialBuilder, spec: TrialSpec, prep: Prepared) -> Path:
    """The prepared model's op list (name, portable key, module, type, compute) in execution order, written once
    per (surgery, compute) pair beside the run's search logs: what ``htx report`` draws its map from."""
    d = Path(builder.cfg.store.artifacts_dir) / (builder.run_id or "adhoc")
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


__all__ = ["LINE_WIDTH", "PROGRESS_EVERY_S", "fit", "SearchSession", "search_log_name", "write_ops_file"]
