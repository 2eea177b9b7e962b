"""The one search machinery: what every search policy gets from its context.

:class:`SearchContext` owns budget (evaluations, seconds) enforced once, memoised evaluations, the search log,
progress, the best verified set, and first-order noise from the unit or carried by portable key.
:func:`run_search` runs a policy on it and turns a budget stop or Ctrl-C into an answer: the best verified set,
stored as stopped or interrupted. A search policy only decides which sets to try.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from htx.criteria import Criterion
from htx.errors import PluginError
from htx.metrics import worst_case
from htx.opmap import placement_runs
from htx.results import Evaluation, FirstOrder, FrontierPoint, SearchResult, SearchStep, check_search_result
from htx.types import Assignment, OpInfo, OpStats

if TYPE_CHECKING:
    from htx.interfaces.precision import SearchPolicy

CostKind = Literal["fp32_ops", "partitions", "latency"]


class SearchStopped(Exception):
    """Raised by :meth:`SearchContext.evaluate` when the declared budget is spent (``str()`` says which)."""


class SearchContext:
    """Handed to a search policy: the ops, evaluation with budget, memo, log and progress, and the best set.

    ``evaluate`` is the pipeline of the search's row on every fixture, worst case (``per_fixture`` kept); an
    assignment that passes is also measured on the sibling rows (``siblings``: the grid's other STFT backends,
    which reuse the answer) and the metrics become the worst case over all of them, so an answer verified here
    passes on every row. With ``cost: latency`` declared, ``timed_evaluate`` measures instead (latency timed as a
    trial times it, so the search ranks by the numbers the leaderboard shows). ``record(assignment)`` returns per-op :class:`OpStats` from one pass, or raises
    ``NotImplementedError`` when the compute unit cannot record.
    """

    def __init__(
        self,
        ops: list[OpInfo],
        evaluate: Callable[[Assignment], dict[str, Any]],
        record: Callable[[Assignment], dict[str, OpStats]] | None = None,
        targets: Any = None,
        progress: Callable[[SearchContext, SearchStep], None] | None = None,
        first_order: Callable[[int, Any], FirstOrder] | None = None,
        siblings: Callable[[Assignment], list[dict[str, dict[str, Any]]]] | None = None,
        timed_evaluate: Callable[[Assignment], dict[str, Any]] | None = None,
    ) -> None:
        self.ops = ops
        self.compute_ops = [op for op in ops if op.compute]
        self.targets = targets
        self._evaluate = evaluate
        self._timed_evaluate = timed_evaluate
        self._record = record
        self._first_order = first_order
        self._siblings = siblings
        self._progress = progress
        self._order = {op.name: i for i, op in enumerate(self.compute_ops)}
        self.criterion = Criterion.targets()
        self.cost_kind: CostKind = "fp32_ops"
        self.max_evaluations: int | None = None
        self.deadline: float | None = None  # time.perf_counter() value
        #: evaluations run (memo hits are free); the budget counts those since :meth:`begin`
        self.evaluations = 0
        self.memo_hits = 0
        self.log: list[SearchStep] = []
        self._memo: dict[frozenset[str], Evaluation] = {}
        self._start = 0
        self.t0 = time.perf_counter()
        self.best: tuple[Assignment, Evaluation] | None = None

    # what the policy declares ---------------------------------------------------------------------------

    def begin(self, criterion: Criterion | str | dict[str, Any] = "targets", max_evaluations: int | None = None,
              max_seconds: float | None = None, cost: CostKind = "fp32_ops") -> None:
        """State the criterion, the budget and the cost at the search's start (progress shows them)."""
        self.criterion = Criterion.parse(criterion)
        self.cost_kind = cost
        self.max_evaluations = max_evaluations
        self.deadline = time.perf_counter() + max_seconds if max_seconds else None
        self._start = self.evaluations
        self.t0 = time.perf_counter()

    @property
    def spent(self) -> int:
        """Evaluations since :meth:`begin` (what ``max_evaluations`` counts)."""
        return self.evaluations - self._start

    def passes(self, metrics: Any) -> bool:
        """Whether ``metrics`` meet the declared criterion (the run's targets when none was declared)."""
        return self.criterion.passes(metrics, self.targets)

    def cost(self, assignment: Assignment, metrics: Evaluation | None = None) -> float:
        """The declared cost of ``assignment``: FP32 ops, partitions (precision segments in execution order), or
        the model time ``metrics`` measured (FP32 ops when it was not timed)."""
        if self.cost_kind == "partitions":
            return float(placement_runs(self.ops, assignment)["partitions"])
        if self.cost_kind == "latency" and metrics is not None and metrics.model_ms is not None:
            return metrics.model_ms
        return float(self.n_fp32(assignment))

    def n_fp32(self, assignment: Assignment) -> int:
        return sum(op.name not in assignment.fp16 for op in self.compute_ops)

    # evaluation -----------------------------------------------------------------------------------------

    def cached(self, assignment: Assignment) -> Evaluation | None:
        """The evaluation of ``assignment`` if it was measured already (no budget spent)."""
        return self._memo.get(assignment.fp16)

    def evaluate(self, assignment: Assignment, phase: str = "", fresh: bool = False) -> Evaluation:
        """The worst-case metrics of ``assignment``; memoised (``fresh``: measure again), counted, logged.

        Raises :class:`SearchStopped` when ``max_evaluations`` or ``max_seconds`` is spent."""
        key = assignment.fp16
        if key in self._memo and not fresh:
            self.memo_hits += 1
            return self._memo[key]
        if self.max_evaluations is not None and self.spent >= self.max_evaluations:
            raise SearchStopped(f"max_evaluations={self.max_evaluations}")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise SearchStopped("max_seconds")
        t0 = time.perf_counter()
        evaluate = self._timed_evaluate if self.cost_kind == "latency" and self._timed_evaluate is not None else self._evaluate
        raw = evaluate(assignment)
        if self._siblings is not None and self.passes(raw):
            raw = worst_case(raw, *self._siblings(assignment))
        ev = Evaluation(raw)
        self.evaluations += 1
        self._memo[key] = ev
        passed = self.passes(ev)
        fp32 = tuple(sorted((n for n in self._order if n not in key), key=self._order.__getitem__))
        cost = self.cost(assignment, ev)
        if passed and (self.best is None or (len(fp32), cost) < (self.n_fp32(self.best[0]), self.cost(*self.best))):
            self.best = (assignment, ev)
        step = SearchStep(len(self.log), phase, len(fp32), passed, ev.snr_db, ev.finite, ev.model_ms, cost,
                          round(time.perf_counter() - t0, 4), fp32, ev.scalars())
        self.log.append(step)
        if self._progress is not None:
            self._progress(self, step)
        return ev

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

    # answers --------------------------------------------------------------------------------------------

    def result(self, assignment: Assignment, status: str, passed: bool | None = None, details: dict[str, Any] | None = None,
               frontier: Sequence[FrontierPoint] = (), interrupted: bool = False) -> SearchResult:
        """The :class:`SearchResult` for ``assignment``: ``passed`` defaults to whether its evaluation passed;
        ``final`` is that evaluation's scalars; criterion, evaluations and log come from this context."""
        ev = self.cached(assignment)
        ok = passed if passed is not None else (ev is not None and self.passes(ev))
        final = {k: v for k, v in (ev.scalars() if ev is not None else {}).items() if k != "per_fixture"}
        return SearchResult(
            assignment, criterion=self.criterion, status=status, passed=bool(ok), interrupted=interrupted,
            evaluations=self.spent, final=final, frontier=list(frontier), log=list(self.log), details=dict(details or {}),
        ).with_ops(self.ops)

    def stopped(self, why: str, interrupted: bool = False, details: dict[str, Any] | None = None) -> SearchResult:
        """The answer when the search was cut short: the best verified set so far, or every op FP32 (not passed)."""
        if self.best is not None:
            return self.result(self.best[0], f"{why}: best verified set so far", True, details, interrupted=interrupted)
        return self.result(Assignment.all_fp32(), f"{why}: nothing verified", False, details, interrupted=interrupted)


def run_search(policy: SearchPolicy, ctx: SearchContext) -> SearchResult:
    """Run ``policy`` on ``ctx``: a budget stop or Ctrl-C that escapes it ends with the best verified set, and a
    result of the wrong type is an error naming the policy."""
    where = f"precision {policy.name!r}.search()"
    try:
        result = policy.search(ctx)
    except SearchStopped as stop:
        result = ctx.stopped(f"stopped at {stop}")
    except KeyboardInterrupt:
        result = ctx.stopped("interrupted (Ctrl-C)", interrupted=True)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    return check_search_result(result, where).with_ops(ctx.ops)


__all__ = ["CostKind", "SearchContext", "SearchStopped", "run_search"]
