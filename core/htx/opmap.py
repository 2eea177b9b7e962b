"""The one place that maps framework op names to the Core ML MIL op vocabulary.

Policies select ops by MIL type (``conv``, ``linear``, ``matmul``, ``softmax``, ...) so that one policy
means the same thing on every compute unit. Reshape-like types move data without arithmetic: they are
listed but are not "compute" ops (they do not count in ``fp16_op_fraction`` and keep their input dtype).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: MIL types that only move or reinterpret data.
LAYOUT_TYPES = frozenset({
    "reshape", "transpose", "expand_dims", "squeeze", "slice_by_index", "slice_by_size", "concat", "split",
    "stack", "pad", "gather", "cast", "tile", "identity", "const", "shape", "fill", "range_1d", "band_part",
    "broadcast_to",
})

#: aten overload-packet name -> MIL type. Composite torch ops with no single MIL op keep a descriptive
#: name (``group_norm``, ``glu``); ``std``/``var`` are labelled by their reduction (Core ML lowers them to
#: reduce_mean/sub/mul/sqrt, and their FP16 risk is the reduction).
ATEN_TO_MIL: dict[str, str] = {
    "convolution": "conv", "_convolution": "conv", "conv1d": "conv", "conv2d": "conv",
    "addmm": "linear", "linear": "linear",
    "mm": "matmul", "bmm": "matmul", "baddbmm": "matmul", "matmul": "matmul",
    "scaled_dot_product_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention_for_cpu": "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_cudnn_attention": "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math": "scaled_dot_product_attention",
    "_softmax": "softmax", "softmax": "softmax", "_log_softmax": "softmax",
    "native_layer_norm": "layer_norm", "layer_norm": "layer_norm",
    "native_group_norm": "group_norm", "group_norm": "group_norm",
    "mean": "reduce_mean", "std": "reduce_mean", "var": "reduce_mean", "std_mean": "reduce_mean", "var_mean": "reduce_mean",
    "sum": "reduce_sum", "amax": "reduce_max", "max": "reduce_max", "amin": "reduce_min", "min": "reduce_min",
    "norm": "l2_norm", "linalg_vector_norm": "l2_norm",
    "add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "real_div", "true_divide": "real_div",
    "pow": "pow", "sqrt": "sqrt", "rsqrt": "rsqrt", "exp": "exp", "log": "log", "abs": "abs", "neg": "mul",
    "reciprocal": "inverse", "square": "square",
    "gelu": "gelu", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "glu": "glu", "silu": "silu",
    "sin": "sin", "cos": "cos", "clamp": "clip", "clamp_min": "clip", "clamp_max": "clip", "where": "select",
    "cumsum": "cumsum", "erf": "erf",
    "view": "reshape", "_unsafe_view": "reshape", "reshape": "reshape", "flatten": "reshape", "unflatten": "reshape",
    "view_as_real": "reshape", "view_as_complex": "reshape",
    "permute": "transpose", "transpose": "transpose", "t": "transpose",
    "unsqueeze": "expand_dims", "squeeze": "squeeze",
    "slice": "slice_by_index", "select": "slice_by_index", "narrow": "slice_by_index",
    "cat": "concat", "stack": "stack", "split": "split", "split_with_sizes": "split", "unbind": "split", "chunk": "split",
    "constant_pad_nd": "pad", "reflection_pad1d": "pad", "reflection_pad2d": "pad", "pad": "pad",
    "index_select": "gather", "index": "gather", "embedding": "gather", "gather": "gather",
    "expand": "broadcast_to", "repeat": "tile",
    "_to_copy": "cast", "clone": "identity", "contiguous": "identity",
}

#: aten ops that are not op instances of the model (no arithmetic, no data: views of parameters,
#: factories, autograd bookkeeping).
ATEN_IGNORED = frozenset({
    "detach", "alias", "lift_fresh", "lift_fresh_copy", "empty", "empty_like", "zeros", "zeros_like", "ones",
    "ones_like", "arange", "full", "full_like", "scalar_tensor", "_local_scalar_dense", "copy_", "copy",
    "empty_strided", "new_empty", "new_zeros", "new_ones", "new_full", "fill_", "zero_", "as_strided",
    "_has_compatible_shallow_copy_type", "is_same_size", "sym_size", "sym_stride", "sym_numel", "dim", "size",
    "stride", "numel", "item", "resolve_conj", "resolve_neg", "_conj", "conj",
})


def mil_type_for_aten(func: Any, args: tuple[Any, ...] = ()) -> str | None:
    """MIL type of an aten op call, or None for calls that are not op instances."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    if base in ATEN_IGNORED or name in ATEN_IGNORED:
        return None
    if base in ("convolution", "_convolution") and len(args) > 6 and bool(args[6]):
        return "conv_transpose"
    mil = ATEN_TO_MIL.get(base)
    if mil is None:
        return f"aten.{base}"
    return mil


def is_compute(mil_type: str) -> bool:
    return mil_type not in LAYOUT_TYPES


#: aten reductions over squared inputs that the MIL vocabulary labels by their reduction (``reduce_mean``):
#: compute units mark such op instances with ``OpInfo.info["squares"] = True``.
SQUARING_ATEN = frozenset({"std", "var", "std_mean", "var_mean"})


def squares_input(func: Any) -> bool:
    """Whether an aten op reduces the squares of its input (its FP16 accumulator grows with x**2)."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    return name in SQUARING_ATEN


# --------------------------------------------------------------------------------------------------
# portable op identity: (module path, MIL type, ordinal) on every compute unit


def model_prefix(inner: Any) -> str:
    """The qualified name (with a trailing dot) of the ``HTDemucs`` inside ``inner``; ``""`` if none.

    Portable module paths are relative to the demucs model (``encoder.2.dconv``), whatever attribute a
    surgery keeps it under, so the same module has the same path on every unit and under every surgery.
    """
    for name, module in inner.named_modules():
        if type(module).__name__ == "HTDemucs":
            return f"{name}." if name else ""
    return ""


def portable_module(qualname: str, prefix: str) -> str:
    """``qualname`` (relative to the inner model) made relative to the demucs model; the inner model's own
    modules keep their names, and ops of the inner model's (or demucs model's) own forward get ``""``."""
    if prefix and (qualname + ".").startswith(prefix):
        return qualname[len(prefix):]
    return qualname


@contextlib.contextmanager
def module_stack(inner: Any) -> Iterator[list[str]]:
    """The module-path lister: while the block runs, the yielded list's last item is the portable path of the
    module running now (``stack[-1]``; empty in the inner model's own forward). Forward pre/post hooks on every
    submodule keep it, with ``ModuleList`` entries named whole (``encoder.2.dconv.layers.0``) and paths
    relative to the demucs model (:func:`portable_module`). A unit that lists ops from a dispatch pass
    reads it per op; one that converts maps its program's scopes through :func:`portable_module`."""
    prefix = model_prefix(inner)
    stack: list[str] = []
    handles = []

    def enter(path: str) -> Any:
        def hook(module: Any, args: Any) -> None:  # a pre-hook returning a value would replace the inputs
            stack.append(path)
        return hook

    def leave(module: Any, args: Any, output: Any) -> None:  # ... and a forward hook, the output
        stack.pop()

    for qualname, module in inner.named_modules():
        if qualname:
            handles.append(module.register_forward_pre_hook(enter(portable_module(qualname, prefix))))
            handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def number_ops(modules: list[str], types: list[str]) -> list[int]:
    """The ordinal of each op among the ops of its MIL type in its module, in execution order."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for m, t in zip(modules, types):
        k = seen.get((m, t), 0)
        out.append(k)
        seen[(m, t)] = k + 1
    return out


def placement_runs(ops: Any, assignment: Any) -> dict[str, int]:
    """Precision runs of the compute ops in execution order: ``partitions`` (maximal runs of one precision,
    the segments a CPU_AND_NE run would be split into), ``ne_ops`` (FP16) and ``off_ne_ops`` (FP32)."""
    runs, last = 0, None
    ne = off = 0
    for op in ops:
        if not op.compute:
            continue
        low = op.name in assignment.fp16
        ne += low
        off += not low
        if low != last:
            runs += 1
            last = low
    return {"partitions": runs, "ne_ops": ne, "off_ne_ops": off}
