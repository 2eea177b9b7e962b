"""Conversion evidence for surgeries: trace an inner model, convert it with coremltools, list its MIL ops.

Used by the surgery tests and by ``htx bench surgery``; runs on Linux (``skip_model_load=True``: the
program is built and type-checked, never executed here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from htx_plugins.compute.coreml.convert import convert, trace


def convert_inner(inner: nn.Module, args: tuple[torch.Tensor | None, ...], target: str = "iOS18") -> Any:
    """An FP32 ``mlprogram`` of ``inner`` traced on ``args`` (iOS18 target: fused attention); not loaded.

    The same trace and conversion as the ``coreml`` compute unit (fast path off, FP32 inputs and outputs).
    """
    traced, sig = trace(inner, args)
    return convert(traced, sig, target)


def mil_op_types(mlmodel: Any) -> list[str]:
    """The MIL op types of the converted program's ``main`` function, in program order (consts included)."""
    return [op.op_type for op in mlmodel._mil_program.functions["main"].operations]
