"""Static precision policies: ``fp32``, ``all-fp16`` and ``curated-fp32``."""

from __future__ import annotations

import fnmatch

from pydantic import Field

from htx.api import Assignment, OpInfo, Params, StaticPolicy

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


class ModulesParams(Params):
    keep_fp32: list[str] = Field(
        default_factory=list,
        description="globs over module paths (the module and everything inside it), optionally ':type': "
                    "'encoder.*.dconv', 'crosstransformer.*', 'encoder.*:reduce_mean'",
    )


class ModulesFP32(StaticPolicy):
    """FP16 everywhere except the ops in the listed modules: an FP32 set written over the model's structure.

    Patterns are globs over portable module paths (relative to the demucs model, as ``htx ops`` prints
    them), matching the module and every module inside it, with an optional ``:type`` glob over MIL types.
    The same patterns select the same modules on every compute unit (a torch ``group_norm`` and the ~10 MIL
    ops Core ML makes of it are in one GroupNorm module).

    Example config::

        precision:
          - modules: {keep_fp32: ["crosstransformer.*"]}
          - modules: {keep_fp32: ["encoder.*.dconv.layers.*.4", "*:softmax", "tencoder.0"]}
    """

    name = "modules"
    Params = ModulesParams

    def select(self, ops: list[OpInfo]) -> Assignment:
        keep = [op.name for op in ops if op.compute and any(_matches(op, p) for p in self.params.keep_fp32)]
        return Assignment.keep_fp32(ops, keep)


def _matches(op: OpInfo, pattern: str) -> bool:
    module, sep, type_ = pattern.partition(":")
    in_module = fnmatch.fnmatchcase(op.module, module) or fnmatch.fnmatchcase(op.module, module + ".*")
    return in_module and (not sep or fnmatch.fnmatchcase(op.type, type_))
