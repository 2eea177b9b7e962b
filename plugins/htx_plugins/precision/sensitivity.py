"""``sensitivity``: rank ops by the noise each part of the model adds in FP16, then pick, verify, repair and
minimize an FP32 set against a quality bar and a deployment cost.

**Why not bisect.** Group testing finds rare culprits (an op that overflows). FP16 error in HTDemucs is
mostly rounding noise accumulated over many ops, each adding some noise power; there are no culprits, and
bisect spends hundreds of evaluations learning that. Noise powers roughly add (on the demo model the single-op
powers sum to 1.68x the all-FP16 noise), so the question is which few ops carry most of the power.

**Rank, first order** (``rank: auto`` where the unit gives gradients: the torch unit). One forward pass runs
every compute op in FP32 and, beside it, in FP16 from the same inputs, keeping each op's local rounding error
``e_i``; then ``projections`` backward passes of random Gaussian output projections ``r`` give ``J_i^T r`` at
every op at once, and ``E[((J_i^T r) . e_i)^2] = ||J_i e_i||^2`` is the noise power op ``i`` adds at the output
(:meth:`htx.api.ComputeUnit.fp16_noise`). Why this and not batched noise injection: it costs one
forward and a few backward passes for all ops together, whatever their number, and measures each op's own
FP16 error rather than an assumed one. The estimates (per fixture, on its first segment) are calibrated by
one all-FP16 evaluation (scaled so they sum to its measured noise), so the ranking costs **one**
evaluation. An op whose FP16 output overflows or turns NaN has infinite power and ranks first.

**On the target unit.** Units that give gradients rank on their own ops: the torch unit, and the Core ML
emulator, whose ``fp16_noise`` runs the converted MIL program (a decomposed group norm's
``reduce_mean``/``square``/``sqrt`` included) with the configured ``accumulate``.

**Black-box units** (a native runtime): the same estimates are computed on
``rank_unit`` (default ``torch``, same surgery) and carried onto the unit's ops by portable key
(:func:`htx.identity.transfer_scores`: the MIL ops of one torch op share its estimate and rank together),
then calibrated, verified, repaired and minimized **on the target unit**. Where no gradients are to be had
(``rank: probe``, ``rank_unit: null``, or the gradient unit is unavailable), ranking falls back to probing:

**Rank, probing** (evaluation-only, works on every unit). The ops form a tree by portable module path
(``crosstransformer`` > ``layers.1`` > ``linear2`` > op). One evaluation runs one subtree in FP16 and
everything else in FP32; its noise power ``10^(-SNR/10)`` is the subtree's contribution. Starting from the
top-level modules, the heaviest subtree is split into its children until the subtrees left in FP16 add up
to less than the bar allows: a few evaluations per op that matters rather than one per op. The ranking,
its method and every probe are in the search log (``summary.ranking``, ``rank_method``, ``rank_note``).

**Select, verify, repair.** The FP32 set is the leaves taken out of FP16 by the ranking. It is verified by
one evaluation against the criterion (every criterion bisect has: ``finite``, ``within_tol``, ``targets``,
``{snr_db: X}``); if it fails (noise powers are only roughly additive), the next-heaviest subtrees along the
ranking are added, galloping (1, 2, 4, ... subtrees) and then binary search, until it passes: a short repair
costs one or two evaluations, a long one at most ``2 log2 n + 1``. Every evaluation of a set that passes is
also run on the sibling rows (the grid's other STFT backends), so "verified" means verified on every row.

**Minimize, cost ``fp32_ops``** (default). With gradients and an SNR bar, the members the estimates
(recalibrated at the verified set) say are unneeded go in one group evaluation, halved on failure (at most
4 tries); then a removal pass, lightest member first, drops every member the criterion does not need: the
answer is 1-minimal, with bisect's guarantee, unless ``max_evaluations`` / ``max_seconds`` cut the pass
short, which the answer then says. ``trust_estimate_db`` skips the members whose removal the estimates
predict misses the bar by more than that many dB, and the answer says how many were kept on the estimate
alone.

**Minimize, cost ``partitions`` or ``latency``: regions, not ops.** FP32 ops cluster (input normalization,
the last decoders, output de-normalization), and a 1-minimal set scatters them over many small islands, each
a Neural Engine <-> CPU hop; removing ops one at a time only to fill the gaps again afterwards costs one
evaluation per op and buys nothing. So after the same group removal on the estimate:

1. *Merge.* The FP16 runs of the execution order that separate FP32 islands are filled (set FP32), cheapest
   first by ops per partition removed (a run between two islands removes two partitions, one at either end
   of the program one), while that price is at most ``hop_ops`` (default 8: one hop is worth 8 FP32 ops).
   One evaluation verifies the merged set (with ``latency``, it is kept only if its measured model time is
   lower).
2. *Drop regions.* Each FP32 region (a maximal FP32 run) is tried back in FP16 whole, lightest estimate first:
   one evaluation per region, and each success removes up to two partitions.
3. *Trim region ends.* From each end of each region, 1, 2, 4, ... ops go back to FP16 while that passes, tried
   only where the estimates predict it stays under the bar; an end at the program's first or last op stays
   (trimming it would add a partition).

Guarantee: the answer passed verification on every row; no FP32 region of it can return to FP16 whole
("region-minimal (checked)"); no FP16 run is left whose fill costs ``hop_ops`` or less per partition it
removes, as of the merge. It is not 1-minimal op by op (``one_minimal`` false): ops inside a region may be
individually unneeded, and filling them is the price of fewer partitions. ``merged`` in the summary says
what merging did (``gaps``, ``partitions_before``, ``partitions_after``, ``fp32_ops_added``,
``regions_dropped``, ``ops_trimmed``).

**Cost.** ``cost: fp32_ops`` counts FP32 ops; ``partitions`` counts the precision segments in execution order
(the placement audit); ``latency`` is the model time the verification evaluations measured. The answer
reports its cost.

**Frontier.** ``bars: [40, 50, 60, 70]`` returns, from the same probes, the verified set for each SNR bar
(the criterion's own answer is the one minimized); the trial stores them (``htx show`` prints the frontier).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from htx.api import (
    Assignment,
    Criterion,
    Evaluation,
    FrontierPoint,
    OpInfo,
    Params,
    SearchContext,
    SearchPolicy,
    SearchResult,
    SearchStopped,
    placement_runs,
)


class SensitivityParams(Params):
    criterion: Criterion = Field(Criterion.targets(), description="finite | within_tol | targets | {snr_db: X}")
    cost: Literal["fp32_ops", "partitions", "latency"] = "fp32_ops"
    bars: list[float] = Field(default_factory=list, description="also return the verified set for each SNR bar (a frontier)")
    minimize: bool = Field(True, description="drop members the criterion does not need (1-minimality)")
    hop_ops: float = Field(
        8.0, ge=0, description="cost partitions | latency: fill an FP16 gap between FP32 islands when it costs at most "
        "this many FP32 ops per partition it removes (0: no merging)")
    margin_db: float = Field(1.0, ge=0, description="rank until the predicted SNR clears the bar by this much")
    rank: Literal["auto", "first_order", "probe"] = Field(
        "auto", description="first_order: gradients (no evaluations); probe: subtree evaluations; auto: first_order where gradients exist")
    projections: int = Field(8, ge=1, description="random output projections (backward passes) of the first-order ranking")
    rank_unit: str | dict[str, Any] | None = Field(
        "torch", description="compute entry that gives gradients when the trial's unit gives none (null: probe instead)")
    trust_estimate_db: float | None = Field(
        None, ge=0, description="minimize on the calibrated estimates: remove the members they say are unneeded in one "
        "evaluation, and keep without trying those whose removal they predict misses the bar by more than this many dB "
        "(null: try every member, 1-minimal checked)")
    max_evaluations: int = Field(400, ge=2)
    max_seconds: float | None = Field(None, gt=0)


@dataclass
class _Node:
    """A subtree of ops: a module path and the compute ops under it."""

    path: str
    ops: list[OpInfo]
    power: float = 0.0  # noise power relative to the reference when only this subtree is FP16
    snr: float | None = None

    @property
    def leaf(self) -> bool:
        return len(self.ops) == 1


def _children(node: _Node) -> list[_Node]:
    """Split by the next module path component; the node's own ops (in no child module) form one group,
    and a group of ops of one module splits into single ops."""
    if "#" in node.path or all(op.module == node.path for op in node.ops):
        return [_Node(op.key, [op]) for op in node.ops]
    depth = len(node.path.split(".")) if node.path else 0
    groups: dict[str, list[OpInfo]] = {}
    own: list[OpInfo] = []
    for op in node.ops:
        parts = op.module.split(".") if op.module else []
        if len(parts) > depth:
            groups.setdefault(".".join(parts[: depth + 1]), []).append(op)
        else:
            own.append(op)
    out = [_Node(p, ops) for p, ops in groups.items()]
    if len(own) == 1:
        out.append(_Node(own[0].key, own))
    elif own:
        out.append(_Node(f"{node.path}#own", own))
    if len(out) == 1 and not out[0].leaf:
        return _children(out[0])  # a chain of single children: nothing to measure in between
    return out


class _Search:
    def __init__(self, ctx: SearchContext, p: SensitivityParams) -> None:
        self.ctx, self.p = ctx, p
        self.ops = ctx.compute_ops
        self.start = ctx.evaluations
        self.probed: list[_Node] = []  # every subtree measured, for the log even when a budget cuts the ranking
        self.selected = 0  # FP32 set size after verify/repair, before the removal pass
        self.t0 = time.perf_counter()
        self.first_verified: dict[str, Any] | None = None  # when the first passing set was verified
        self.method = "probe"
        self.method_note = ""
        self.groups: list[_Node] | None = None  # first-order: op groups with calibrated per-fixture powers
        self.group_powers: dict[str, dict[str, float]] = {}
        self.merged: dict[str, int] | None = None  # what partition merging did to the answer
        self.removed_in_group = 0  # members the minimize pass removed in one evaluation (on the estimate)
        self.estimate_scale: float | None = None  # measured / predicted noise of the set minimized (trust_estimate_db)

    @property
    def evaluations(self) -> int:
        return self.ctx.evaluations - self.start

    def evaluate(self, fp16: frozenset[str], phase: str) -> Evaluation:
        """Through the context (memo, budget, log, progress); notes when the first passing set was verified."""
        before = self.ctx.evaluations
        m = self.ctx.evaluate(Assignment(fp16), phase)
        if self.ctx.evaluations != before and self.first_verified is None and fp16 and self.p.criterion.passes(m, self.ctx.targets):
            self.first_verified = {"evaluation": self.evaluations, "seconds": time.perf_counter() - self.t0,
                                   "fp32_ops": len(self.ops) - len(fp16), "snr_db": m.snr_db}  # all-FP32 is no answer
        return m

    def passes(self, fp16: frozenset[str], phase: str) -> bool:
        return self.p.criterion.passes(self.evaluate(fp16, phase), self.ctx.targets)

    def cached(self, fp16: frozenset[str]) -> Evaluation | None:
        return self.ctx.cached(Assignment(fp16))

    def cost(self, fp16: frozenset[str], metrics: Evaluation | None = None) -> float:
        return self.ctx.cost(Assignment(fp16), metrics)

    # ranking -------------------------------------------------------------------------------------------

    def probe(self, node: _Node) -> None:
        m = self.evaluate(frozenset(op.name for op in node.ops), "rank")
        self.probed.append(node)
        node.snr = m.get("snr_db")
        if not m.get("finite", True):
            node.power = math.inf
        elif node.snr is None:
            node.power = 0.0 if m.get("within_tol") else math.inf
        else:
            node.power = 10 ** (-node.snr / 10)

    def setup_first_order(self) -> None:
        """Gradient estimates (no evaluations) calibrated by one all-FP16 evaluation; on failure, probing."""
        if self.p.rank == "probe":
            return
        fo = None
        why: list[str] = []
        try:
            fo = self.ctx.first_order_noise(self.p.projections)
        except NotImplementedError as exc:
            why.append(str(exc))
            if self.p.rank_unit is not None:
                try:  # rank on a unit with gradients, carried here by portable key, verified here
                    fo = self.ctx.first_order_noise(self.p.projections, self.p.rank_unit)
                except NotImplementedError as exc2:
                    why.append(str(exc2))
                except Exception as exc2:  # e.g. that unit is unavailable here: rank by probing, and say why
                    why.append(f"{self.p.rank_unit}: {exc2}")
        if fo is None:
            if self.p.rank == "first_order":
                raise RuntimeError("rank: first_order needs gradients: " + "; ".join(why))
            self.method_note = "no gradients (" + "; ".join(why) + "): ranked by probing"
            return
        names = {op.name for op in self.ops}
        members: dict[str, list[OpInfo]] = {}
        for op in self.ops:
            members.setdefault(fo.groups.get(op.name, op.name), []).append(op)
        allf = self.evaluate(frozenset(names), "calibrate")
        per = allf.get("per_fixture") or {}
        calib: dict[str, float] = {}
        for f, powers in fo.powers.items():
            total = sum(v for n, v in powers.items() if n in names and math.isfinite(v))
            snr = (per.get(f) or {}).get("snr_db")
            if snr is not None and math.isfinite(snr) and total > 0:
                calib[f] = 10 ** (-snr / 10) / total
            else:
                calib[f] = 1.0
        nonfinite = not allf.get("finite", True)
        if nonfinite and not any(math.isinf(v) for p in fo.powers.values() for v in p.values()):
            self.method_note = "all-FP16 is not finite and no op overflows alone: ranked by probing"
            return
        self.groups = []
        for gid, ops in members.items():
            node = _Node(gid if len(ops) > 1 else ops[0].key, ops)
            self.group_powers[node.path] = {f: calib[f] * max(fo.powers[f].get(op.name, 0.0) for op in ops) for f in fo.powers}
            node.power = max(self.group_powers[node.path].values(), default=0.0)
            self.groups.append(node)
        self.method = "first_order"
        self.method_note = (f"first order on {fo.unit}: {fo.projections} projections, {fo.seconds:.1f} s, "
                            f"calibrated by one all-FP16 evaluation")

    def rank(self, budget: float) -> tuple[list[_Node], list[_Node]]:
        """(FP32 leaves in the order taken, FP16 subtrees left heaviest first) so that the FP16 ones add up to
        less than ``budget``."""
        if self.groups is not None:
            return self.rank_first_order(budget)
        root = _Node("", list(self.ops))
        frontier = _children(root)
        for n in frontier:
            self.probe(n)
        taken: list[_Node] = []

        def over() -> bool:
            powers = [n.power for n in frontier]
            return any(math.isinf(x) for x in powers) or sum(powers) > budget

        while frontier and over():
            frontier.sort(key=lambda n: -n.power)
            heavy = frontier.pop(0)
            if heavy.leaf:
                taken.append(heavy)
                continue
            kids = _children(heavy)
            for k in kids:
                self.probe(k)
            frontier.extend(kids)
        frontier.sort(key=lambda n: -n.power)
        return taken, frontier

    def rank_first_order(self, budget: float) -> tuple[list[_Node], list[_Node]]:
        """Heaviest groups to FP32 until, on every fixture, the calibrated powers left in FP16 sum below ``budget``
        (a sum with an overflowing group is infinite and never below it)."""
        order = sorted(self.groups or [], key=lambda n: -n.power)
        fixtures = list(next(iter(self.group_powers.values()), {}))

        def over(rest: list[_Node]) -> bool:
            sums = (sum(self.group_powers[n.path][f] for n in rest) for f in fixtures)
            return any(math.isinf(v) or v > budget for v in sums)

        k = 0
        while k < len(order) and over(order[k:]):
            k += 1
        return order[:k], order[k:]

    # select / verify / repair / minimize ------------------------------------------------------------

    def answer(self, taken: list[_Node], rest: list[_Node], minimize: bool) -> tuple[frozenset[str], bool, str]:
        all_names = frozenset(op.name for op in self.ops)
        fp32 = {op.name for n in taken for op in n.ops}
        if self.passes(all_names - fp32, "verify"):
            status = "verified"
        else:  # repair: the shortest prefix of `rest` to add, galloping (1, 2, 4, ...) then binary search
            lo, hi = 0, 1
            while True:
                hi = min(hi, len(rest))
                extra = {op.name for n in rest[:hi] for op in n.ops}
                if self.passes(all_names - fp32 - extra, "repair" if hi < len(rest) else "all-fp32"):
                    break
                if hi == len(rest):
                    return frozenset(), False, "unreachable: even all-FP32 fails"
                lo, hi = hi, hi * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                extra = {op.name for n in rest[:mid] for op in n.ops}
                if self.passes(all_names - fp32 - extra, "repair"):
                    hi = mid
                else:
                    lo = mid
            fp32 |= {op.name for n in rest[:hi] for op in n.ops}
            status = f"repaired (+{hi} subtrees)"
            if not self.passes(all_names - fp32, "verify"):
                return all_names - fp32, False, "repair did not pass"
        self.selected = len(fp32)
        weight = {op.name: n.power for n in taken + rest for op in n.ops}
        if minimize and self.p.cost != "fp32_ops" and self.p.hop_ops > 0:
            return self.minimize_regions(all_names, fp32, weight, status)
        if minimize:
            fp32 = self._remove_by_estimate(all_names, fp32, weight)  # a few group evaluations
            order = sorted(fp32, key=lambda name: (weight.get(name, 0.0), -self._cost_drop(fp32, name)))
            bar = self._bar_power()
            trust = self.p.trust_estimate_db if self.groups is not None and bar is not None else None
            scale = self.estimate_scale or 1.0
            kept = 0
            for name in order:  # lightest first; each try is one evaluation
                if trust is not None and self._noise(all_names - fp32) + weight.get(name, 0.0) * scale > bar * 10 ** (trust / 10):
                    kept += 1  # its removal is predicted to miss the bar by more than `trust` dB: not tried
                    continue
                trial = fp32 - {name}
                if self.passes(all_names - trial, "minimize"):
                    fp32 = trial
            if self.removed_in_group:
                status += f", {self.removed_in_group} members removed in one group evaluation on the estimate"
            if kept:
                status += (f", minimal on the estimate: {kept} of {len(fp32)} members kept on the estimate alone "
                           f"(removal predicted to miss the bar by > {trust:g} dB), the rest checked")
            else:
                status += ", 1-minimal (checked)"
        return self.merge(all_names - fp32, status)

    def _bar_power(self) -> float | None:
        """The criterion's bar as a noise power relative to the reference (None for finite / within_tol)."""
        bar = self.p.criterion.bar_db(self.ctx.targets)
        return None if bar is None else 10 ** (-bar / 10)

    def _noise(self, fp16: frozenset[str]) -> float:
        """Measured worst-fixture noise power of a set already evaluated."""
        m = self.cached(fp16)
        snr = None if m is None else m.snr_db
        return 0.0 if snr is None else (math.inf if not math.isfinite(snr) and snr < 0 else 10 ** (-snr / 10))

    def merge(self, fp16: frozenset[str], status: str) -> tuple[frozenset[str], bool, str]:
        """``cost: partitions | latency`` without minimizing: fill the short FP16 gaps between FP32 islands
        (:meth:`_merge_checked`) and keep the merged set if it passes."""
        if self.p.cost == "fp32_ops" or self.p.hop_ops <= 0 or not fp16:
            return fp16, True, status
        out, note, info = self._merge_checked(fp16)
        if note is None:
            return fp16, True, status
        if out == fp16:
            return fp16, True, f"{status}; {note}"
        self.merged = info
        return out, True, status.replace(", 1-minimal (checked)", ", 1-minimal (checked) before merging") + f"; then {note} (verified)"

    def _merge_checked(self, fp16: frozenset[str]) -> tuple[frozenset[str], str | None, dict[str, int]]:
        """Fill short FP16 gaps between FP32 islands (:func:`merge_gaps`: fewer Neural Engine <-> CPU hops, fewer
        dtype boundaries) and verify the merged set; for ``cost: latency`` keep it only if its measured model time
        is lower. Returns (the set kept, a note on what was done or why not (None: no gap to fill), counts of what
        the kept set changed). Filling only adds FP32 ops, so the merged set rarely fails."""
        order = [op.name for op in self.ctx.ops if op.compute]
        merged, filled, gaps = merge_gaps(order, fp16, self.p.hop_ops)
        before = self.cost_partitions(fp16)
        kept = {"gaps": 0, "partitions_before": before, "partitions_after": before, "fp32_ops_added": 0}
        if not filled:
            return fp16, None, kept
        after = self.cost_partitions(merged)
        what = f"{gaps} FP16 gaps filled: partitions {before} -> {after}, +{filled} FP32 ops"
        if not self.passes(merged, "merge"):
            return fp16, f"merging ({what}) failed verification, kept unmerged", kept
        if self.p.cost == "latency" and not self._faster(merged, fp16):
            return fp16, f"merging ({what}) measured no faster, kept unmerged", kept
        return merged, what, {"gaps": gaps, "partitions_before": before, "partitions_after": after, "fp32_ops_added": filled}

    def minimize_regions(self, all_names: frozenset[str], fp32: set[str], weight: dict[str, float],
                         status: str) -> tuple[frozenset[str], bool, str]:
        """``cost: partitions | latency``: minimize regions, not ops. Remove the members the estimates say are
        unneeded in a few group evaluations, fill the short FP16 gaps (:meth:`_merge_checked`), then try to
        return each FP32 region to FP16 whole, lightest first (one evaluation each), then trim region ends."""
        order = [op.name for op in self.ctx.ops if op.compute]
        fp32 = self._remove_by_estimate(all_names, fp32, weight)
        fp16, note, info = self._merge_checked(all_names - fp32)
        dropped = 0
        for region in sorted(fp32_regions(order, fp16), key=lambda r: sum(weight.get(n, 0.0) for n in r)):
            trial = fp16 | frozenset(region)
            if self.passes(trial, "minimize-region"):
                fp16, dropped = trial, dropped + 1
        trimmed = self._trim_edges(order, fp16)
        fp16 = fp16 | trimmed
        self.merged = {**info, "partitions_after": self.cost_partitions(fp16), "regions_dropped": dropped,
                       "ops_trimmed": len(trimmed)}
        if self.removed_in_group:
            status += f", {self.removed_in_group} members removed in one group evaluation on the estimate"
        status += "; " + "; ".join(([note] if note else []) + [
            f"{dropped} FP32 regions returned to FP16, {len(trimmed)} ops from region ends; region-minimal (checked): "
            f"no FP32 region of the answer can return to FP16 whole"])
        return fp16, True, status

    def _trim_edges(self, order: list[str], fp16: frozenset[str]) -> frozenset[str]:
        """Return ops at the ends of FP32 regions to FP16 (fewer FP32 ops, same partitions): from each end, 1, 2,
        4, ... ops at a time while the removal passes, tried only where the estimates (recalibrated at the
        current set) predict it stays under the bar. An end at the program's first or last op stays (its
        removal would add a partition). Returns the ops returned to FP16."""
        bar = self._bar_power()
        out: set[str] = set()
        first, last = order[0], order[-1]
        for region in fp32_regions(order, fp16):
            for side in (region, region[::-1]):
                if side[0] in (first, last):
                    continue
                k, at = 1, 0
                while at + k < len(side) and not out.issuperset(side[at:at + k]):
                    chunk = [n for n in side[at:at + k] if n not in out]
                    trial = fp16 | out | frozenset(chunk)
                    if bar is not None and self.groups is not None:
                        now = fp16 | out
                        if self._predicted(trial, now) > bar:
                            break
                    if not self.passes(trial, "minimize-edge"):
                        break
                    out |= set(chunk)
                    at, k = at + k, k * 2
        return frozenset(out)

    def _estimate(self, fp16: frozenset[str], but_not: frozenset[str] = frozenset()) -> float:
        """First-order noise power of ``fp16``: the summed calibrated powers of the op groups wholly in it (and
        not wholly in ``but_not``)."""
        return sum(n.power for n in self.groups or [] if all(op.name in fp16 for op in n.ops)
                   and not (but_not and all(op.name in but_not for op in n.ops)))

    def _predicted(self, trial: frozenset[str], now: frozenset[str]) -> float:
        """Noise of ``trial`` predicted from the measured noise of ``now`` plus the estimates of the groups it adds."""
        return self._noise(now) + self._estimate(trial, now) * (self.estimate_scale or 1.0)

    def _faster(self, a: frozenset[str], b: frozenset[str]) -> bool:
        t0, t1 = ((self.cached(x) or {}).get("model_ms") for x in (b, a))
        return t0 is None or t1 is None or t1 < t0

    def _remove_by_estimate(self, all_names: frozenset[str], fp32: set[str], weight: dict[str, float]) -> set[str]:
        """Remove, in one evaluation, the lightest members whose summed estimate (recalibrated at this set) fits
        under the bar; on failure halve the group (at most 4 tries). Needs gradients and an SNR bar."""
        bar = self._bar_power()
        if self.groups is None or bar is None:
            return fp32
        fp16_now = all_names - fp32
        noise = self._noise(fp16_now)
        predicted = self._estimate(fp16_now)
        scale = noise / predicted if predicted > 0 and math.isfinite(predicted) and noise > 0 else 1.0
        self.estimate_scale = scale
        room = bar - noise
        group: list[str] = []
        total = 0.0
        for name in sorted(fp32, key=lambda n: weight.get(n, 0.0)):
            w = weight.get(name, 0.0) * scale
            if not math.isfinite(w) or total + w > room:
                break
            group.append(name)
            total += w
        for _ in range(4):
            if len(group) < 2:
                break
            if self.passes(all_names - (fp32 - set(group)), "minimize-group"):
                self.removed_in_group = len(group)
                return fp32 - set(group)
            group = group[: len(group) // 2]
        return fp32

    def cost_partitions(self, fp16: frozenset[str]) -> int:
        return placement_runs(self.ctx.ops, Assignment(fp16))["partitions"]

    def _cost_drop(self, fp32: set[str], name: str) -> float:
        all_names = frozenset(op.name for op in self.ops)
        return self.cost(all_names - fp32) - self.cost(all_names - (fp32 - {name}))


def merge_gaps(order: list[str], fp16: frozenset[str], hop_ops: float) -> tuple[frozenset[str], int, int]:
    """Fill FP16 runs (in execution ``order``) that separate FP32 islands, cheapest per partition removed first,
    while a fill costs at most ``hop_ops`` ops per partition it removes: a run between two FP32 islands removes
    two partitions, one at either end of the program removes one. Returns (FP16 set, ops filled, runs filled)."""
    low = set(fp16)
    filled = gaps = 0
    while True:
        runs: list[tuple[bool, list[str]]] = []
        for name in order:
            is_low = name in low
            if runs and runs[-1][0] == is_low:
                runs[-1][1].append(name)
            else:
                runs.append((is_low, [name]))
        best: tuple[float, list[str]] | None = None
        for i, (is_low, names) in enumerate(runs):
            saved = (i > 0) + (i < len(runs) - 1)  # FP32 neighbours: partitions this fill removes
            if is_low and saved and (best is None or len(names) / saved < best[0]):
                best = (len(names) / saved, names)
        if best is None or best[0] > hop_ops:
            return frozenset(low), filled, gaps
        low -= set(best[1])
        filled += len(best[1])
        gaps += 1


def fp32_regions(order: list[str], fp16: frozenset[str]) -> list[list[str]]:
    """The maximal runs of FP32 ops in execution ``order``."""
    regions: list[list[str]] = []
    prev = True
    for name in order:
        low = name in fp16
        if not low:
            if prev:
                regions.append([])
            regions[-1].append(name)
        prev = low
    return regions


def _budget(criterion: Criterion, targets: Any, margin_db: float) -> float:
    if criterion.kind == "finite":
        return math.inf  # only non-finite subtrees are opened
    bar = criterion.bar_db(targets)
    return 10 ** (-((60.0 if bar is None else bar) + margin_db) / 10)


class Sensitivity(SearchPolicy):
    """Rank ops by the noise they add in FP16 (probing subtrees of the module tree), then select, verify,
    repair and minimize an FP32 set; optionally a frontier over several SNR bars.

    Answers in tens of evaluations where the error is accumulated rounding noise (the common case), and
    finds overflow culprits too. See the module docstring for the method and its guarantees.

    Example config::

        precision:
          - sensitivity                                         # criterion: the run's targets
          - sensitivity: {criterion: {snr_db: 60}, cost: partitions}
          - sensitivity: {criterion: {snr_db: 60}, bars: [40, 50, 60, 70]}
    """

    name = "sensitivity"
    Params = SensitivityParams

    def search(self, ctx: SearchContext) -> SearchResult:
        p = self.params
        ctx.begin(p.criterion, p.max_evaluations, p.max_seconds, cost=p.cost)
        s = _Search(ctx, p)
        t0 = time.perf_counter()
        status, ok, fp16 = "", False, frozenset()
        frontier: list[FrontierPoint] = []
        ranking: list[dict[str, Any]] = []
        try:
            s.setup_first_order()
            taken, rest = s.rank(_budget(p.criterion, ctx.targets, p.margin_db))
            rank_evals, rank_s = s.evaluations, time.perf_counter() - t0
            ranking = [{"subtree": n.path, "fp32": True, "power": n.power, "snr_db": n.snr, "ops": [o.key for o in n.ops]} for n in taken]
            ranking += [{"subtree": n.path, "fp32": False, "power": n.power, "snr_db": n.snr, "n_ops": len(n.ops)} for n in rest]
            fp16, ok, status = s.answer(taken, rest, p.minimize)
            for bar in sorted(p.bars):
                sub = Sensitivity(self.Params(**{**p.model_dump(), "criterion": {"snr_db": bar}, "bars": [], "minimize": False,
                                                              "hop_ops": 0}))
                sub_s = _Search(ctx, sub.params)
                sub_s.start = s.start
                sub_s.groups, sub_s.group_powers = s.groups, s.group_powers
                b_taken, b_rest = sub_s.rank(_budget(Criterion.snr(bar), ctx.targets, p.margin_db))
                b_fp16, b_ok, b_status = sub_s.answer(b_taken, b_rest, False)
                m = s.cached(b_fp16)
                frontier.append(FrontierPoint(
                    snr_db_bar=bar, passed=b_ok, fp32_ops=len(s.ops) - len(b_fp16), snr_db=None if m is None else m.snr_db,
                    partitions=s.cost_partitions(b_fp16), cost=sub_s.cost(b_fp16, m), status=b_status,
                    fp32_keys=tuple(o.key for o in s.ops if o.name not in b_fp16)))
        except SearchStopped as stop:
            status = f"stopped at {stop}: best verified set so far"
            rank_evals, rank_s = s.evaluations, time.perf_counter() - t0
            if ctx.best is not None:
                fp16, ok = ctx.best[0].fp16, True
        if not ranking:  # cut short while ranking: what was measured, heaviest first
            ranking = [{"subtree": n.path, "fp32": None, "power": n.power, "snr_db": n.snr, "n_ops": len(n.ops)}
                       for n in sorted(s.probed, key=lambda n: -n.power)]
        if not ok and ctx.best is None:
            fp16 = frozenset()  # nothing verified: run the trial in FP32 so its metrics show why
        m = s.cached(fp16)
        details = {
            "cost_kind": p.cost, "one_minimal": "1-minimal" in status and s.merged is None, "merged": s.merged,
            "removed_in_group": s.removed_in_group, "estimate_scale": s.estimate_scale, "n_ops": len(s.ops),
            "cost": s.cost(fp16, m),
            "partitions": placement_runs(ctx.ops, Assignment(fp16))["partitions"],
            "rank_evaluations": rank_evals, "rank_s": rank_s, "rank_method": s.method, "rank_note": s.method_note,
            "selected_fp32": s.selected, "first_verified": s.first_verified, "ranking": ranking[:200],
        }
        return ctx.result(Assignment(fp16), status, passed=bool(ok), details=details, frontier=frontier)
