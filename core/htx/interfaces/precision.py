"""The precision interface: a static policy selects from the op list; a search policy measures."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

from htx.interfaces.base import Plugin
from htx.results import SearchResult
from htx.types import Assignment, OpInfo

if TYPE_CHECKING:
    from htx.search import SearchContext

class PrecisionPolicy(Plugin):
    """Decides, for each op instance, FP16 or FP32. Subclass :class:`StaticPolicy` or :class:`SearchPolicy`.

    The two are separate contracts: the trial builder calls ``select(ops)`` on a static policy and
    ``search(ctx)`` on a search policy; a class registered as a precision policy must subclass one of them.
    """

    kind = "precision"


class StaticPolicy(PrecisionPolicy):
    """A policy that decides from the op list alone: ``select(ops) -> Assignment``.

    Example (a complete plugin: keep convolutions in FP32, everything else FP16)::

        from htx.api import Assignment, StaticPolicy, hookimpl

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
    """A policy that measures: ``search(ctx) -> SearchResult``. It only decides which sets to try.

    ``ctx`` (:class:`htx.search.SearchContext`) owns the rest: ``ctx.begin(criterion, max_evaluations,
    max_seconds, cost)`` states the bar and the budget; ``ctx.evaluate(assignment, phase)`` measures an
    assignment on every fixture and every row that reuses the answer (worst case, an
    :class:`htx.results.Evaluation`), memoised, logged, counted against the budget and shown as progress;
    ``ctx.passes(evaluation)`` judges it by the declared :class:`htx.criteria.Criterion`; ``ctx.best`` is the
    best verified set so far; ``ctx.result(assignment, status)`` builds the :class:`htx.results.SearchResult`.
    When the budget runs out, ``evaluate`` raises :class:`htx.search.SearchStopped`; a policy that lets it (or
    Ctrl-C) escape gets the best verified set as its answer, stored as stopped (or interrupted). ``ctx.record``
    gives per-op statistics and ``ctx.first_order_noise`` per-op FP16 noise estimates where the unit has them.
    The search runs once per (surgery, compute, precision) combination; its log is stored with the run.

    Example (a complete plugin: the first all-FP16-but-one-type assignment that passes)::

        from htx.api import Assignment, Criterion, SearchPolicy, hookimpl

        class OneTypeFP32(SearchPolicy):
            '''Try keeping each op type FP32 in turn; take the first that meets the run's targets.'''
            name = "one-type-fp32"
            def search(self, ctx):
                ctx.begin(Criterion.targets(), max_evaluations=50)
                for t in dict.fromkeys(op.type for op in ctx.compute_ops):
                    a = Assignment.keep_fp32(ctx.ops, [op.name for op in ctx.ops if op.type == t])
                    if ctx.passes(ctx.evaluate(a, phase=f"keep {t}")):
                        return ctx.result(a, status=f"{t} kept FP32", passed=True, details={"type": t})
                return ctx.result(Assignment.all_fp32(), status="no single type is enough")

        @hookimpl
        def htx_register_precision_policies(register):
            register(OneTypeFP32)
    """

    @abstractmethod
    def search(self, ctx: SearchContext) -> SearchResult:
        """Search with ``ctx`` and return the answer (build it with ``ctx.result``)."""


__all__ = ["PrecisionPolicy", "SearchPolicy", "StaticPolicy"]
