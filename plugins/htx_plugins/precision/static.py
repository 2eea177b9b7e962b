"""Static precision policies: ``fp32``, ``all-fp16`` and ``curated-fp32``."""

from __future__ import annotations

from pydantic import Field

from htx.contracts import Assignment, OpInfo, Params, StaticPolicy

CURATED_DEFAULT = ("pow", "sqrt", "real_div", "l2_norm", "reduce_mean", "reduce_sum", "softmax", "matmul")


class FP32(StaticPolicy):
    """Every op in FP32 (the conversion-only baseline).

    Example config::

        precision: [fp32]
    """

    name = "fp32"

    def select(self, ops: list[OpInfo]) -> Assignment:
        return Assignment.all_fp32()


class AllFP16(StaticPolicy):
    """Every compute op in FP16 (what ``ct.convert(compute_precision=FLOAT16)`` does).

    Example config::

        precision: [all-fp16]
    """

    name = "all-fp16"

    def select(self, ops: list[OpInfo]) -> Assignment:
        return Assignment.all_fp16(ops)


class CuratedParams(Params):
    ops: list[str] = Field(default_factory=lambda: list(CURATED_DEFAULT), description="MIL op types kept in FP32")


class CuratedFP32(StaticPolicy):
    """FP16 everywhere except the op types in ``ops`` (the hand-found set from HTDemucs Core ML ports).

    Example config::

        precision:
          - curated-fp32                       # pow, sqrt, real_div, l2_norm, reduce_mean, reduce_sum, softmax, matmul
          - curated-fp32: {ops: [softmax, layer_norm]}
    """

    name = "curated-fp32"
    Params = CuratedParams

    def select(self, ops: list[OpInfo]) -> Assignment:
        keep = set(self.params.ops)
        return Assignment.keep_fp32(ops, [op.name for op in ops if op.type in keep])
