"""``magnitude``: keep in FP32 the ops whose FP32 values would not fit FP16, from one calibration pass.

One all-FP32 pass with per-op recording (``SearchContext.record``) gives each op's max |output|, max |input|
and, for reductions, how many elements each output value reduces. An op is kept in FP32 when

1. its output or an input is non-finite already in FP32, or the op was not seen in the pass;
2. its max |output| exceeds ``max_abs`` (default ``65504 / headroom``): its FP16 result would overflow, or
   come within ``headroom`` of overflowing on louder audio;
3. its max |input| exceeds ``max_abs``: the input is cast to FP16 when the op runs in FP16, so a large
   value produced by an FP32 op overflows there (the consumer of an overflowing op is at risk too);
4. ``reductions`` is on and the op is an FP16-unsafe reduction: a device that accumulates in FP16 could
   hold up to ``reduction_size * max|input|`` in the accumulator (sums, means, softmax's denominator), or
   ``reduction_size * max|input|**2`` for reductions of squares (``l2_norm``, ``layer_norm``,
   ``group_norm``, ``batch_norm``, ``instance_norm`` and ops a compute unit marks with
   ``OpInfo.info["squares"]``, e.g. ``std``/``var``); the op is kept when that bound exceeds
   ``accumulator_max`` (default 65504: the bound is already the worst case, so no extra headroom).

There is no accuracy loop: the assignment is reported like any other policy's, and its trial metrics show
whether the rule was enough. The calibration pass is what the compute unit's ``record`` runs (for the
runner: the first segment of the run's first usable fixture), so calibrate on loud material.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from htx.api import Assignment, OpStats, Params, SearchContext, SearchPolicy, SearchResult

FP16_MAX = 65504.0
#: MIL op types that reduce squares of their input (variance, sum of squares).
SQUARING_TYPES = frozenset({"l2_norm", "layer_norm", "group_norm", "batch_norm", "instance_norm", "reduce_sum_square", "reduce_l2_norm"})


class MagnitudeParams(Params):
    headroom: float = Field(8.0, ge=1.0, description="keep ops within this factor of the FP16 maximum")
    max_abs: float | None = Field(None, gt=0, description="threshold on max |x|; default 65504 / headroom")
    reductions: bool = Field(True, description="apply the FP16 accumulator rule to reductions")
    accumulator_max: float = Field(FP16_MAX, gt=0, description="largest worst-case FP16 accumulator allowed")


def keep_reason(op_type: str, squares: bool, st: OpStats | None, limit: float, accumulator_max: float,
                reductions: bool) -> tuple[str, str] | None:
    """``(rule, detail)`` saying why an op must stay FP32 under the magnitude rules, or None when FP16 is safe.

    ``rule`` is one of ``unseen``, ``non-finite``, ``output``, ``input``, ``reduction``.
    """
    if st is None:
        return "unseen", "not seen in the calibration pass"
    if not st.finite or not st.inputs_finite:
        return "non-finite", "non-finite already in FP32"
    if st.max_abs > limit:
        return "output", f"output max |x| {st.max_abs:.4g} > {limit:.4g}"
    if st.max_abs_input > limit:
        return "input", f"input max |x| {st.max_abs_input:.4g} > {limit:.4g}"
    if reductions and st.reduction_size > 1:
        squared = squares or op_type in SQUARING_TYPES
        acc = st.reduction_size * (st.max_abs_input ** 2 if squared else st.max_abs_input)
        if acc > accumulator_max:
            what = "squares" if squared else "values"
            return "reduction", (f"sum of {st.reduction_size} {what} of |x| <= {st.max_abs_input:.4g}: "
                                 f"accumulator bound {acc:.4g} > {accumulator_max:.4g}")
    return None


class Magnitude(SearchPolicy):
    """Keeps in FP32 the ops whose FP32 magnitudes (or reductions) do not fit FP16; one calibration pass.

    Example config::

        precision:
          - magnitude                              # max |x| <= 65504 / 8 in FP16, reductions checked
          - magnitude: {headroom: 2, reductions: false}
    """

    name = "magnitude"
    Params = MagnitudeParams

    @property
    def limit(self) -> float:
        return self.params.max_abs if self.params.max_abs is not None else FP16_MAX / self.params.headroom

    def search(self, ctx: SearchContext) -> SearchResult:
        p = self.params
        compute_ops = [op for op in ctx.ops if op.compute]
        stats = ctx.record(Assignment.all_fp32())
        reasons: dict[str, tuple[str, str]] = {}
        per_op: dict[str, dict[str, Any]] = {}
        for op in compute_ops:
            st = stats.get(op.name)
            why = keep_reason(op.type, bool(op.info.get("squares")), st, self.limit, p.accumulator_max, p.reductions)
            if why is not None:
                reasons[op.name] = why
            per_op[op.name] = {
                "type": op.type, "fp32": why is not None, "reason": why[1] if why else None,
                **({"max_abs": st.max_abs, "max_abs_input": st.max_abs_input, "reduction_size": st.reduction_size} if st else {}),
            }
        assignment = Assignment.keep_fp32(compute_ops, reasons)
        details = {
            "max_abs": self.limit, "accumulator_max": p.accumulator_max, "reductions": p.reductions,
            "calibration": "one all-FP32 record pass", "n_ops": len(compute_ops),
            "rules": dict(Counter(rule for rule, _ in reasons.values())),
            "kept": {name: {**per_op[name], "rule": rule} for name, (rule, _) in reasons.items()},
        }
        # nothing is evaluated, so nothing is verified: the trial's own row says whether the answer passes
        return ctx.result(assignment, f"{len(reasons)} ops kept FP32 by magnitude rules (not evaluated)", passed=False,
                          details=details)
