"""``bisect``: adaptive group testing for a small set of ops to keep in FP32.

The search starts from every compute op in FP16. If that fails the criterion it checks that every op in
FP32 passes (otherwise no assignment can), then finds culprits one at a time: with the culprits found so
far (``K``) kept FP32 and the remaining candidates in execution order (``C``), it binary-searches the
shortest prefix ``C[:j]`` such that ``K + C[:j]`` in FP32 passes. ``C[j-1]`` is then necessary given the
ops before it, joins ``K``, and the candidates shrink to ``C[:j-1]``; the search stops when ``K`` alone
passes. Each culprit costs ``ceil(log2 |C|)`` evaluations plus one check, so k culprits among n ops take
about ``k * log2(n)`` evaluations instead of the n of a one-op-at-a-time scan.

Robustness against non-monotone interactions (an op that only hurts in combination, rounding errors that
cancel): the binary search keeps the invariant "``K + C[:lo]`` fails, ``K + C[:hi]`` passes" with both ends
*evaluated*, so it always ends at a real pass/fail boundary, never at an extrapolated one. Afterwards each
member is dropped in turn and kept out if the trial still passes; after any drop, members whose drop failed
earlier are retried against the smaller set, so the result is 1-minimal with respect to the final set
(every member's removal was evaluated and fails). The final set is re-verified (evaluated again) unless the
search's last evaluation was exactly that set. Every evaluation (assignment and metrics) goes into the
search log.

Granularity: ``instance`` searches over op instances; ``type`` over op types (all instances of a type move
together); ``type-then-instance`` first finds a minimal set of types, then searches instances within those
types only (everything else stays FP16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from htx.api import (
    Assignment,
    Criterion,
    OpInfo,
    Params,
    SearchContext,
    SearchPolicy,
    SearchResult,
    SearchStopped,
)


class BisectParams(Params):
    criterion: Criterion = Field(Criterion.targets(), description="finite | within_tol | targets | {snr_db: X}")
    granularity: Literal["instance", "type", "type-then-instance"] = "instance"
    minimize: bool = Field(True, description="drop members that are not needed (1-minimality)")
    verify: bool = Field(True, description="re-evaluate the final set unless it was the last evaluation")
    max_evaluations: int = Field(1000, ge=2, description="stop and return the smallest passing set found")
    max_seconds: float | None = Field(None, gt=0, description="the same, after this long (keep below trial_timeout_s)")


def bound(k: int, n: int) -> int:
    """The evaluation budget the tests hold the search to: ``2 k ceil(log2 n) + k + 2``."""
    return 2 * k * math.ceil(math.log2(max(n, 2))) + k + 2


def minimal_units(
    n_units: int,
    test: Callable[[Sequence[int], str], bool],
    known_fail_empty: bool = False,
    known_pass_full: bool = False,
    minimize: bool = True,
) -> list[int] | None:
    """A small list of unit indices ``S`` (in the order found) such that ``test(S)`` passes.

    ``test(indices, phase)`` keeps the units ``indices`` in FP32 (all others FP16) and says whether the
    trial passes. ``known_*`` skip evaluating the empty and full sets when the caller already knows their
    outcome. Returns ``[]`` when no unit is needed and ``None`` when even all units fail.
    """
    everything = list(range(n_units))
    if not known_fail_empty and test([], "all-fp16"):
        return []
    if not known_pass_full and not test(everything, "all-fp32"):
        return None
    found: list[int] = []
    cand = everything
    while cand:
        # Invariant: found + cand[:lo] fails, found + cand[:hi] passes (both evaluated or known).
        lo, hi = 0, len(cand)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if test(found + cand[:mid], "bisect"):
                hi = mid
            else:
                lo = mid
        found.append(cand[hi - 1])
        cand = cand[: hi - 1]
        # With no candidates left, found == the prefix set that passed.
        if not cand or test(found, "check"):
            break
    # A single member is 1-minimal already: the empty set fails (evaluated or known).
    if minimize and len(found) > 1:
        found = _one_minimal(found, test)
    return found


def _one_minimal(found: list[int], test: Callable[[Sequence[int], str], bool]) -> list[int]:
    current = list(found)
    pending = list(current)
    failed: list[int] = []
    while pending:
        u = pending.pop(0)
        rest = [x for x in current if x != u]
        if rest and test(rest, "minimize"):
            current = rest
            # Drops that failed against the larger set are retried against this one (non-monotone safety).
            pending = [x for x in failed if x in current] + pending
            failed = []
        else:
            failed.append(u)
    return current


class _Evaluator:
    """Keep-FP32 sets of one search judged through the context (which memoises, logs and keeps the budget)."""

    def __init__(self, ctx: SearchContext, compute_ops: list[OpInfo]) -> None:
        self.ctx = ctx
        self.ops = compute_ops
        self.last: frozenset[str] | None = None

    def test(self, keep: frozenset[str], phase: str, fresh: bool = False) -> bool:
        assignment = Assignment.keep_fp32(self.ops, keep)
        before = self.ctx.evaluations
        ok = self.ctx.passes(self.ctx.evaluate(assignment, phase, fresh=fresh))
        if self.ctx.evaluations != before:
            self.last = keep
        return ok


class Bisect(SearchPolicy):
    """Adaptive group testing (binary search for culprits) for a small, verified FP32 set.

    Finds a 1-minimal set of ops to keep in FP32 such that the trial meets ``criterion`` on every fixture
    of the run, in about ``k * log2(n)`` evaluations for k needed ops among n. Writes every evaluated
    assignment and its metrics to the search log.

    Example config::

        precision:
          - bisect                                         # criterion: the run's targets
          - bisect: {criterion: {snr_db: 60}}
          - bisect: {criterion: finite, granularity: type-then-instance}
    """

    name = "bisect"
    Params = BisectParams

    def search(self, ctx: SearchContext) -> SearchResult:
        p = self.params
        compute_ops = ctx.compute_ops
        ctx.begin(p.criterion, p.max_evaluations, p.max_seconds)
        ev = _Evaluator(ctx, compute_ops)
        types: list[str] = list(dict.fromkeys(op.type for op in compute_ops))
        by_type = {t: [op.name for op in compute_ops if op.type == t] for t in types}
        details: dict[str, Any] = {"granularity": p.granularity, "n_ops": len(compute_ops), "n_types": len(types),
                                   "linear_scan_evaluations": len(compute_ops)}
        status = "found"
        keep: frozenset[str] | None
        try:
            if p.granularity == "instance":
                keep = self._instances(ev, [op.name for op in compute_ops], p)
            else:
                units = [frozenset(by_type[t]) for t in types]
                chosen = minimal_units(len(units), lambda idx, ph: ev.test(_union(units, idx), ph),
                                       minimize=p.minimize)
                keep = None if chosen is None else _union(units, chosen)
                if keep and p.granularity == "type-then-instance":
                    names = [op.name for op in compute_ops if op.name in keep]
                    keep = self._instances(ev, names, p, known=True)
            if keep is None:
                status = "unreachable"
            elif not keep:
                status = "all-fp16 passes"
        except SearchStopped as stop:
            status = f"stopped at {stop}"
            best = ctx.best
            keep = None if best is None else frozenset(op.name for op in compute_ops if op.name not in best[0].fp16)
        if keep is None:  # nothing passes (or nothing verified yet): run the trial in FP32 so its metrics show why
            return ctx.result(Assignment.all_fp32(), status, passed=False, details=details)
        assignment = Assignment.keep_fp32(compute_ops, keep)
        cached = ctx.cached(assignment)
        ok = cached is not None and ctx.passes(cached)
        if p.verify and ev.last != keep:
            try:
                ok = ev.test(keep, "verify", fresh=True)
            except SearchStopped:
                pass
        details["verified_step"] = len(ctx.log) - 1 if ev.last == keep else None
        details["bound_for_found_k"] = bound(len(keep), len(compute_ops))
        return ctx.result(assignment, status, passed=ok, details=details)

    @staticmethod
    def _instances(ev: _Evaluator, names: list[str], p: BisectParams, known: bool = False) -> frozenset[str] | None:
        """Minimal instances among ``names``; ``known``: the empty set fails and all of ``names`` passes."""
        chosen = minimal_units(
            len(names), lambda idx, ph: ev.test(frozenset(names[i] for i in idx), ph),
            known_fail_empty=known, known_pass_full=known, minimize=p.minimize,
        )
        return None if chosen is None else frozenset(names[i] for i in chosen)


def _union(units: list[frozenset[str]], idx: Sequence[int]) -> frozenset[str]:
    out: set[str] = set()
    for i in idx:
        out |= units[i]
    return frozenset(out)
