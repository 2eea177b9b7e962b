"""Conversion evidence for surgeries: trace an inner model, convert it with coremltools, list its MIL ops.

Used by the surgery tests and by ``htx bench surgery``; runs on Linux (``skip_model_load=True``: the
program is built and type-checked, never executed here).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def trace_inner(inner: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``inner`` on ``args`` with the fused MHA fast path off (as Core ML needs)."""
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(inner.eval(), args, check_trace=False)


def convert_inner(inner: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    """An ``mlprogram`` (iOS18 target) of ``inner`` traced on ``args``; not loaded (no Core ML runtime needed)."""
    import coremltools as ct

    traced = trace_inner(inner, args)
    inputs = [ct.TensorType(name=f"input_{i}", shape=tuple(a.shape)) for i, a in enumerate(args)]
    return ct.convert(
        traced,
        inputs=inputs,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
        skip_model_load=True,
    )


def mil_op_types(mlmodel: Any) -> list[str]:
    """The MIL op types of the converted program's ``main`` function, in program order (consts included)."""
    return [op.op_type for op in mlmodel._mil_program.functions["main"].operations]

