"""Torch implementations of MIL ops, one builder per op type.

A builder gets an :class:`OpView` (the op's constant attributes, static shapes, whether it runs in FP16
and whether its reductions accumulate in FP16) and returns ``run(a)``, where ``a`` maps each float or
non-constant input parameter to a tensor (a list of tensors for tuple inputs such as ``concat.values``).

Compute kernels receive FP32 tensors (FP16 values already widened exactly) and return FP32; the emulator
rounds their outputs to FP16 where the op runs in FP16 (so arithmetic inside an op accumulates in FP32).
Layout kernels (reshape, transpose, slice, ...) move data in whatever dtype it is stored in. With
``acc16`` (param ``accumulate: fp16`` on an op that runs in FP16), reductions sum pairwise with every
partial sum rounded to FP16, the pessimistic model of a device that accumulates in half precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from htx_plugins.compute.coreml.graph import Const, Node, Ref, VarInfo

Run = Callable[[dict[str, Any]], Any]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64, "bf16": torch.bfloat16,
    "int32": torch.int32, "int64": torch.int64, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "uint16": torch.int32, "uint32": torch.int64, "bool": torch.bool,
}


class UnknownOpError(NotImplementedError):
    """The program contains an op type the emulator does not implement."""


class OpView:
    """What a kernel builder may know about one op, fixed when the emulator plans an assignment."""

    def __init__(self, node: Node, low: bool, acc16: bool, effective: dict[str, Any],
                 device: torch.device | None = None) -> None:
        self.node = node
        self.device = device or torch.device("cpu")  # where kernels that create tensors put them
        self.low = low  # the op runs in FP16
        self.acc16 = acc16  # and its reductions accumulate in FP16
        self._effective = effective  # const float params after the FP16 pass's rounding

    @property
    def out(self) -> list[VarInfo]:
        return self.node.outputs

    def is_const(self, param: str) -> bool:
        return isinstance(self.node.inputs.get(param), Const)

    def attr(self, param: str, default: Any = None) -> Any:
        """A constant input as a Python value (lists for arrays), or ``default`` when absent."""
        arg = self.node.inputs.get(param)
        if arg is None:
            return default
        if not isinstance(arg, Const):
            raise ValueError(f"op {self.node.name!r} ({self.node.type}): input {param!r} is not a constant")
        v = arg.value
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        return v

    def fval(self, param: str, default: float) -> float:
        """A constant float scalar as this op sees it (FP16-rounded when the pass casts it)."""
        if param in self._effective:
            return float(np.asarray(self._effective[param]).reshape(-1)[0])
        v = self.attr(param, default)
        return float(np.asarray(v).reshape(-1)[0])

    def in_var(self, param: str) -> VarInfo:
        arg = self.node.inputs[param]
        assert isinstance(arg, (Ref, Const))
        return arg.var

    def in_shape(self, param: str) -> tuple[int, ...]:
        return self.in_var(param).shape

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.node.outputs[i].shape


# --------------------------------------------------------------------------------------------------
# FP16 accumulation


def round16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def _axes(axes: Any, rank: int) -> list[int]:
    if axes is None:
        return list(range(rank))
    if isinstance(axes, int):
        axes = [axes]
    return sorted({int(a) % rank for a in axes}) if rank else []


def sum16(x: torch.Tensor, dims: Sequence[int], keepdim: bool) -> torch.Tensor:
    """Pairwise sum over ``dims`` with every partial sum rounded to FP16 (values stay FP32 tensors)."""
    rank = x.dim()
    dims = _axes(list(dims), rank)
    rest = [d for d in range(rank) if d not in dims]
    y = x.permute(rest + dims).reshape(*[x.shape[d] for d in rest], -1)
    n = y.shape[-1]
    if n == 0:
        y = y.new_zeros(*y.shape[:-1], 1)
    y = round16(y)
    while y.shape[-1] > 1:
        n = y.shape[-1]
        h = n // 2
        s = round16(y[..., :h] + y[..., h: 2 * h])
        y = torch.cat([s, y[..., 2 * h:]], -1) if n % 2 else s
    out = y[..., 0]
    if keepdim:
        shape = [1 if d in dims else x.shape[d] for d in range(rank)]
        out = out.reshape(shape)
    return out


def mean16(x: torch.Tensor, dims: Sequence[int], keepdim: bool) -> torch.Tensor:
    n = 1
    for d in _axes(list(dims), x.dim()):
        n *= x.shape[d]
    return round16(sum16(x, dims, keepdim) / max(n, 1))


def softmax16(x: torch.Tensor, axis: int) -> torch.Tensor:
    m = x.amax(dim=axis, keepdim=True)
    e = round16(torch.exp(round16(x - m)))
    return e / sum16(e, [axis], keepdim=True)


# --------------------------------------------------------------------------------------------------
# builders

BUILDERS: dict[str, Callable[[OpView], Run]] = {}
#: op types whose kernels move data without arithmetic: they run in the stored dtype.
LAYOUT_KERNELS: set[str] = set()


def builder(*types: str, layout: bool = False) -> Callable[[Callable[[OpView], Run]], Callable[[OpView], Run]]:
    def deco(fn: Callable[[OpView], Run]) -> Callable[[OpView], Run]:
        for t in types:
            BUILDERS[t] = fn
            if layout:
                LAYOUT_KERNELS.add(t)
        return fn

    return deco


def build(view: OpView) -> Run:
    fn = BUILDERS.get(view.node.type)
    if fn is None:
        raise UnknownOpError(
            f"the Core ML emulator has no kernel for MIL op type {view.node.type!r} (op {view.node.name!r}). "
            f"Implement it in htx_plugins/compute/coreml/kernels.py, or use a surgery/target that avoids it."
        )
    return fn(view)


# elementwise binary ---------------------------------------------------------------------------------

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div,
    "pow": torch.pow, "maximum": torch.maximum, "minimum": torch.minimum,
    "floor_div": lambda x, y: torch.div(x, y, rounding_mode="floor"), "mod": torch.remainder,
    "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}


def _binary(v: OpView) -> Run:
    fn = _BINARY[v.node.type]
    return lambda a: fn(a["x"], a["y"])


builder(*_BINARY)(_binary)


# elementwise unary ----------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs, "acos": torch.acos, "asin": torch.asin, "atan": torch.atan, "atanh": torch.atanh,
    "ceil": torch.ceil, "cos": torch.cos, "cosh": torch.cosh, "erf": torch.erf, "exp": torch.exp,
    "exp2": torch.exp2, "floor": torch.floor, "round": torch.round, "sign": torch.sign, "sin": torch.sin,
    "sinh": torch.sinh, "sqrt": torch.sqrt, "square": torch.square, "tan": torch.tan, "tanh": torch.tanh,
    "relu": torch.relu, "relu6": lambda x: torch.clamp(x, 0.0, 6.0), "sigmoid": torch.sigmoid,
    "silu": F.silu, "softplus": F.softplus, "softsign": F.softsign, "logical_not": torch.logical_not,
}


def _unary(v: OpView) -> Run:
    fn = _UNARY[v.node.type]
    return lambda a: fn(a["x"])


builder(*_UNARY)(_unary)


#: Unary ops that add ``epsilon`` to x first: torch function, MIL's default epsilon.
_EPS_UNARY = {"inverse": (torch.reciprocal, 1e-4), "log": (torch.log, 1e-45), "rsqrt": (torch.rsqrt, 1e-12)}


@builder(*_EPS_UNARY)
def _eps_unary(v: OpView) -> Run:
    fn, default = _EPS_UNARY[v.node.type]
    eps = v.fval("epsilon", default)
    return lambda a: fn(a["x"] + eps)


@builder("clip")
def _clip(v: OpView) -> Run:
    lo, hi = v.fval("alpha", 0.0), v.fval("beta", 0.0)
    return lambda a: torch.clamp(a["x"], lo, hi)


@builder("threshold")
def _threshold(v: OpView) -> Run:
    alpha = v.fval("alpha", 0.0)
    return lambda a: torch.clamp(a["x"], min=alpha)


@builder("gelu")
def _gelu(v: OpView) -> Run:
    mode = v.attr("mode", "EXACT")
    if mode == "EXACT":
        return lambda a: F.gelu(a["x"])
    if mode == "TANH_APPROXIMATION":
        return lambda a: F.gelu(a["x"], approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return lambda a: a["x"] * torch.sigmoid(1.702 * a["x"])
    raise ValueError(f"gelu mode {mode!r}")


@builder("leaky_relu")
def _leaky_relu(v: OpView) -> Run:
    alpha = v.fval("alpha", 0.01)
    return lambda a: F.leaky_relu(a["x"], alpha)


@builder("elu")
def _elu(v: OpView) -> Run:
    alpha = v.fval("alpha", 1.0)
    return lambda a: F.elu(a["x"], alpha)


@builder("linear_activation")
def _linear_activation(v: OpView) -> Run:
    alpha, beta = v.fval("alpha", 1.0), v.fval("beta", 0.0)
    return lambda a: a["x"] * alpha + beta


@builder("scaled_tanh")
def _scaled_tanh(v: OpView) -> Run:
    alpha, beta = v.fval("alpha", 1.0), v.fval("beta", 1.0)
    return lambda a: alpha * torch.tanh(beta * a["x"])


@builder("sigmoid_hard")
def _sigmoid_hard(v: OpView) -> Run:
    alpha, beta = v.fval("alpha", 0.2), v.fval("beta", 0.5)
    return lambda a: torch.clamp(alpha * a["x"] + beta, 0.0, 1.0)


@builder("clamped_relu")
def _clamped_relu(v: OpView) -> Run:
    alpha, beta = v.fval("alpha", 0.0), v.fval("beta", 6.0)
    return lambda a: torch.clamp(torch.where(a["x"] >= 0, a["x"], alpha * a["x"]), max=beta)


@builder("prelu")
def _prelu(v: OpView) -> Run:
    def run(a: dict[str, Any]) -> torch.Tensor:
        x, alpha = a["x"], a["alpha"]
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.where(x >= 0, x, x * alpha.reshape(shape))

    return run


@builder("select")
def _select(v: OpView) -> Run:
    return lambda a: torch.where(a["cond"].bool(), a["a"], a["b"])


@builder("cast")
def _cast(v: OpView) -> Run:
    dtype = TORCH_DTYPES[v.attr("dtype")]
    if dtype.is_floating_point:
        return lambda a: a["x"].to(dtype)

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        if x.is_floating_point() and dtype != torch.bool:
            x = torch.trunc(x)  # C-style conversion toward zero, as numpy's astype
        return x.to(dtype)

    return run


# linear algebra ------------------------------------------------------------------------------------


def _conv_pads(v: OpView, kernel: Sequence[int], in_spatial: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    pad_type = v.attr("pad_type", "valid")
    n = len(kernel)
    if pad_type == "custom":
        return list(v.attr("pad", [0] * 2 * n))
    if pad_type == "valid":
        return [0] * 2 * n
    pads: list[int] = []
    for i in range(n):
        k = (kernel[i] - 1) * dilations[i] + 1
        out = math.ceil(in_spatial[i] / strides[i])
        total = max((out - 1) * strides[i] + k - in_spatial[i], 0)
        lo = total // 2 if pad_type == "same" else total - total // 2
        pads += [lo, total - lo]
    return pads


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """MIL ``[before_0, after_0, before_1, after_1, ...]`` (first dim first) -> F.pad order (last dim first)."""
    out: list[int] = []
    for i in range(len(pads) // 2 - 1, -1, -1):
        out += [pads[2 * i], pads[2 * i + 1]]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_geometry(v: OpView) -> tuple[Any, Any, int, list[int], list[int], int]:
    """(weight shape, input shape, spatial dims, strides, dilations, groups) of a conv or conv_transpose op."""
    w_shape = v.in_shape("weight")
    n = len(w_shape) - 2
    return (w_shape, v.in_shape("x"), n, list(v.attr("strides", [1] * n)), list(v.attr("dilations", [1] * n)),
            int(v.attr("groups", 1)))


@builder("conv")
def _conv(v: OpView) -> Run:
    w_shape, x_shape, n, strides, dilations, groups = _conv_geometry(v)
    pads = _conv_pads(v, w_shape[2:], x_shape[2:], strides, dilations)
    conv = _CONV[n]
    symmetric = all(pads[2 * i] == pads[2 * i + 1] for i in range(n))
    padding = [pads[2 * i] for i in range(n)]
    pre = None if symmetric else _torch_pad(pads)

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        if pre is not None:
            x = F.pad(x, pre)
        return conv(x, a["weight"], a.get("bias"), strides, 0 if pre is not None else padding, dilations, groups)

    return run


@builder("conv_transpose")
def _conv_transpose(v: OpView) -> Run:
    w_shape, x_shape, n, strides, dilations, groups = _conv_geometry(v)
    pad_type = v.attr("pad_type", "valid")
    full = [(x_shape[2 + i] - 1) * strides[i] + (w_shape[2 + i] - 1) * dilations[i] + 1 for i in range(n)]
    want = list(v.out_shape()[2:])
    if pad_type == "custom":
        pads = list(v.attr("pad", [0] * 2 * n))
        left = [pads[2 * i] for i in range(n)]
    elif pad_type == "same":
        left = [(full[i] - want[i]) // 2 for i in range(n)]
    else:
        left = [0] * n
    right = [full[i] - left[i] - want[i] for i in range(n)]
    out_pad = [max(0, -r) for r in right]
    conv_t = _CONV_T[n]
    if all(left[i] == right[i] for i in range(n)):
        padding, crop = left, None
    else:
        padding = [0] * n
        crop = tuple([slice(None), slice(None)] + [slice(left[i], left[i] + want[i]) for i in range(n)])

    def run(a: dict[str, Any]) -> torch.Tensor:
        y = conv_t(a["x"], a["weight"], a.get("bias"), strides, padding, out_pad, groups, dilations)
        return y[crop] if crop is not None else y

    return run


@builder("linear")
def _linear(v: OpView) -> Run:
    return lambda a: F.linear(a["x"], a["weight"], a.get("bias"))


@builder("matmul")
def _matmul(v: OpView) -> Run:
    tx, ty = bool(v.attr("transpose_x", False)), bool(v.attr("transpose_y", False))

    def run(a: dict[str, Any]) -> torch.Tensor:
        x, y = a["x"], a["y"]
        if tx:
            x = x.transpose(-1, -2) if x.dim() > 1 else x
        if ty:
            y = y.transpose(-1, -2) if y.dim() > 1 else y
        return torch.matmul(x, y)

    return run


@builder("einsum")
def _einsum(v: OpView) -> Run:
    eq = v.attr("equation")
    return lambda a: torch.einsum(eq, *a["values"])


@builder("scaled_dot_product_attention")
def _sdpa(v: OpView) -> Run:
    acc16 = v.acc16

    def run(a: dict[str, Any]) -> torch.Tensor:
        q, k, val, mask = a["query"], a["key"], a["value"], a.get("attn_mask")
        if not acc16:
            return F.scaled_dot_product_attention(q, k, val, attn_mask=mask)
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = round16(round16(q @ k.transpose(-1, -2)) * scale)
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else round16(scores + mask)
        return round16(softmax16(scores, -1)) @ val

    return run


# reductions ----------------------------------------------------------------------------------------


def _reduce_axes(v: OpView) -> tuple[list[int], bool]:
    rank = len(v.in_shape("x"))
    return _axes(v.attr("axes", None), rank), bool(v.attr("keep_dims", False))


def _reduction(fp32: Callable[[torch.Tensor, list[int], bool], torch.Tensor],
               fp16: Callable[[torch.Tensor, list[int], bool], torch.Tensor] | None = None) -> Callable[[OpView], Run]:
    def make(v: OpView) -> Run:
        dims, keep = _reduce_axes(v)
        fn = fp16 if (v.acc16 and fp16 is not None) else fp32
        if not dims:
            return lambda a: a["x"]
        return lambda a: fn(a["x"], dims, keep)

    return make


BUILDERS["reduce_mean"] = _reduction(lambda x, d, k: torch.mean(x, d, keepdim=k), mean16)
BUILDERS["reduce_sum"] = _reduction(lambda x, d, k: torch.sum(x, d, keepdim=k), sum16)
BUILDERS["reduce_max"] = _reduction(lambda x, d, k: torch.amax(x, d, keepdim=k))
BUILDERS["reduce_min"] = _reduction(lambda x, d, k: torch.amin(x, d, keepdim=k))
BUILDERS["reduce_prod"] = _reduction(lambda x, d, k: _prod(x, d, k))
BUILDERS["reduce_sum_square"] = _reduction(lambda x, d, k: torch.sum(x * x, d, keepdim=k),
                                           lambda x, d, k: sum16(round16(x * x), d, k))
BUILDERS["reduce_l1_norm"] = _reduction(lambda x, d, k: torch.sum(x.abs(), d, keepdim=k),
                                        lambda x, d, k: sum16(x.abs(), d, k))
BUILDERS["reduce_l2_norm"] = _reduction(lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)),
                                        lambda x, d, k: torch.sqrt(sum16(round16(x * x), d, k)))
BUILDERS["reduce_log_sum"] = _reduction(lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
                                        lambda x, d, k: torch.log(sum16(x, d, k)))
BUILDERS["reduce_log_sum_exp"] = _reduction(lambda x, d, k: torch.logsumexp(x, d, keepdim=k), lambda x, d, k: _lse16(x, d, k))


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=True)
    return x if keep else x.reshape([s for i, s in enumerate(x.shape) if i not in dims])


def _lse16(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    m = torch.amax(x, dims, keepdim=True)
    s = sum16(round16(torch.exp(round16(x - m))), dims, keepdim=True)
    out = round16(torch.log(s)) + m
    return out if keep else out.reshape([s for i, s in enumerate(out.shape) if i not in dims])


@builder("reduce_argmax", "reduce_argmin")
def _reduce_arg(v: OpView) -> Run:
    axis = int(v.attr("axis", -1))
    keep = bool(v.attr("keep_dims", False))
    fn = torch.argmax if v.node.type == "reduce_argmax" else torch.argmin
    return lambda a: fn(a["x"], dim=axis, keepdim=keep).to(torch.int32)


@builder("softmax")
def _softmax(v: OpView) -> Run:
    axis = int(v.attr("axis", -1))
    if v.acc16:
        return lambda a: softmax16(a["x"], axis)
    return lambda a: torch.softmax(a["x"], axis)


def _normalize(x: torch.Tensor, dims: list[int], eps: float, acc16: bool) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dims``; with ``acc16``, every step rounded to FP16 as the
    FP16 hardware computes it (mean and variance accumulated in FP16)."""
    if acc16:
        mean = mean16(x, dims, True)
        d = round16(x - mean)
        var = mean16(round16(d * d), dims, True)
        return round16(d * round16(torch.rsqrt(round16(var + eps))))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


@builder("layer_norm")
def _layer_norm(v: OpView) -> Run:
    rank = len(v.in_shape("x"))
    dims = _axes(v.attr("axes", None), rank)
    eps = v.fval("epsilon", 1e-5)
    trailing = dims == list(range(rank - len(dims), rank))
    acc16 = v.acc16
    norm_shape = [v.in_shape("x")[d] for d in dims]

    def affine(y: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
        g, b = a.get("gamma"), a.get("beta")
        bshape = [v.in_shape("x")[d] if d in dims else 1 for d in range(rank)]
        if g is not None:
            y = y * g.reshape(bshape)
            if acc16:
                y = round16(y)
        if b is not None:
            y = y + b.reshape(bshape)
        return y

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        if trailing and not acc16:
            return F.layer_norm(x, norm_shape, a.get("gamma"), a.get("beta"), eps)
        return affine(_normalize(x, dims, eps, acc16), a)

    return run


@builder("instance_norm")
def _instance_norm(v: OpView) -> Run:
    eps = v.fval("epsilon", 1e-5)
    rank = len(v.in_shape("x"))
    dims = list(range(2, rank))
    acc16 = v.acc16

    def run(a: dict[str, Any]) -> torch.Tensor:
        y = _normalize(a["x"], dims, eps, acc16)
        shape = [1, -1] + [1] * (rank - 2)
        if a.get("gamma") is not None:
            y = y * a["gamma"].reshape(shape)
        if a.get("beta") is not None:
            y = y + a["beta"].reshape(shape)
        return y

    return run


@builder("batch_norm")
def _batch_norm(v: OpView) -> Run:
    eps = v.fval("epsilon", 1e-5)
    return lambda a: F.batch_norm(a["x"], a["mean"], a["variance"], a.get("gamma"), a.get("beta"), False, 0.0, eps)


@builder("l2_norm")
def _l2_norm(v: OpView) -> Run:
    eps = v.fval("epsilon", 1e-6)
    rank = len(v.in_shape("x"))
    dims = list(range(max(rank - 3, 0), rank))
    acc16 = v.acc16

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        s = sum16(round16(x * x), dims, True) if acc16 else torch.sum(x * x, dims, keepdim=True)
        return x / torch.sqrt(s + eps)

    return run


@builder("cumsum")
def _cumsum(v: OpView) -> Run:
    axis = int(v.attr("axis", 0))
    exclusive, reverse = bool(v.attr("exclusive", False)), bool(v.attr("reverse", False))

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        if reverse:
            x = torch.flip(x, [axis])
        y = torch.cumsum(x, axis)
        if exclusive:
            y = y - x
        return torch.flip(y, [axis]) if reverse else y

    return run


# layout ---------------------------------------------------------------------------------------------


def _static(v: OpView, i: int = 0) -> list[int]:
    shape = list(v.out_shape(i))
    if any(d < 0 for d in shape):
        raise ValueError(f"op {v.node.name!r} ({v.node.type}) has a symbolic output shape; the emulator needs static shapes")
    return shape


@builder("reshape", "expand_dims", "squeeze", "flatten2d", "identity", layout=True)
def _reshape(v: OpView) -> Run:
    shape = _static(v)
    return lambda a: a["x"].reshape(shape)


@builder("transpose", layout=True)
def _transpose(v: OpView) -> Run:
    perm = [int(p) for p in v.attr("perm")]
    # Contiguous so that later kernels see the same memory layout whatever casts sit in between.
    return lambda a: a["x"].permute(perm).contiguous()


def _slices(v: OpView) -> tuple[Any, list[int]]:
    shape = v.in_shape("x")
    rank = len(shape)
    begin = list(v.attr("begin"))
    end = list(v.attr("end"))
    stride = list(v.attr("stride", None) or [1] * rank)
    bmask = list(v.attr("begin_mask", None) or [False] * rank)
    emask = list(v.attr("end_mask", None) or [False] * rank)
    smask = list(v.attr("squeeze_mask", None) or [False] * rank)
    index: list[Any] = []
    flips: list[int] = []
    for d in range(rank):
        if smask[d]:
            index.append(int(begin[d]) % shape[d])
            continue
        s = int(stride[d])
        b = None if bmask[d] else int(begin[d])
        e = None if emask[d] else int(end[d])
        start, stop, step = slice(b, e, s).indices(shape[d])
        if step > 0:
            index.append(slice(start, stop, step))
        else:  # torch has no negative steps: take the elements, then flip them
            idx = list(range(start, stop, step))
            if idx:
                index.append(slice(idx[-1], idx[0] + 1, -step))
                flips.append(len([i for i in index[:-1] if isinstance(i, slice)]))
            else:
                index.append(slice(0, 0))
    return tuple(index), flips


@builder("slice_by_index", layout=True)
def _slice_by_index(v: OpView) -> Run:
    if not (v.is_const("begin") and v.is_const("end")):
        raise ValueError(f"slice_by_index {v.node.name!r} with run-time begin/end is not supported by the emulator")
    index, flips = _slices(v)

    def run(a: dict[str, Any]) -> torch.Tensor:
        y = a["x"][index]
        if flips:
            y = torch.flip(y, flips)
        return y.contiguous()

    return run


@builder("slice_by_size", layout=True)
def _slice_by_size(v: OpView) -> Run:
    shape = v.in_shape("x")
    begin, size = list(v.attr("begin")), list(v.attr("size"))
    index = tuple(slice(int(b) % shape[d] if shape[d] else 0, shape[d] if int(s) == -1 else int(b) % shape[d] + int(s))
                  for d, (b, s) in enumerate(zip(begin, size, strict=True)))
    return lambda a: a["x"][index].contiguous()


@builder("concat", layout=True)
def _concat(v: OpView) -> Run:
    axis = int(v.attr("axis"))
    interleave = bool(v.attr("interleave", False))
    shape = _static(v)
    if interleave:
        rank = len(shape)
        ax = axis % rank
        return lambda a: torch.stack(list(a["values"]), ax + 1).reshape(shape)
    return lambda a: torch.cat(list(a["values"]), axis)


@builder("stack", layout=True)
def _stack(v: OpView) -> Run:
    axis = int(v.attr("axis"))
    return lambda a: torch.stack(list(a["values"]), axis)


@builder("split", layout=True)
def _split(v: OpView) -> Run:
    axis = int(v.attr("axis"))
    sizes = [o.shape[axis] for o in v.out]
    return lambda a: tuple(t.contiguous() for t in torch.split(a["x"], sizes, axis))


@builder("tile", layout=True)
def _tile(v: OpView) -> Run:
    reps = [int(r) for r in v.attr("reps")]
    return lambda a: a["x"].repeat(reps)


@builder("reverse", layout=True)
def _reverse(v: OpView) -> Run:
    rank = len(v.in_shape("x"))
    axes = _axes(v.attr("axes", None), rank)
    return lambda a: torch.flip(a["x"], axes)


@builder("pad", layout=True)
def _pad(v: OpView) -> Run:
    pads = [int(p) for p in v.attr("pad")]
    mode = v.attr("mode", "constant")
    value = v.fval("constant_val", 0.0)
    # Leading all-zero pairs are dropped: F.pad's reflect/replicate modes only pad the last dims.
    while len(pads) >= 2 and pads[0] == 0 and pads[1] == 0:
        pads = pads[2:]
    tp = _torch_pad(pads)
    if not tp:
        return lambda a: a["x"]
    if mode == "constant":
        return lambda a: F.pad(a["x"], tp, mode="constant", value=value)
    tmode = {"reflect": "reflect", "replicate": "replicate"}[mode]
    n = len(pads) // 2

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        lead = x.shape[: x.dim() - n]
        y = x.reshape(1, -1, *x.shape[x.dim() - n:]) if n < 3 else x
        y = F.pad(y, tp, mode=tmode)
        return y.reshape(*lead, *y.shape[y.dim() - n:])

    return run


@builder("gather", layout=True)
def _gather(v: OpView) -> Run:
    axis = int(v.attr("axis", 0))
    batch_dims = int(v.attr("batch_dims", 0))
    if batch_dims:
        raise ValueError(f"gather {v.node.name!r} with batch_dims={batch_dims} is not supported by the emulator")
    shape = _static(v)
    dim = v.in_shape("x")[axis]

    def run(a: dict[str, Any]) -> torch.Tensor:
        x, idx = a["x"], a["indices"].long()
        idx = torch.where(idx < 0, idx + dim, idx)
        return x.index_select(axis, idx.reshape(-1)).reshape(shape)

    return run


@builder("gather_along_axis", layout=True)
def _gather_along_axis(v: OpView) -> Run:
    axis = int(v.attr("axis", 0))
    dim = v.in_shape("x")[axis]

    def run(a: dict[str, Any]) -> torch.Tensor:
        idx = a["indices"].long()
        return torch.gather(a["x"], axis, torch.where(idx < 0, idx + dim, idx))

    return run


@builder("band_part", layout=True)
def _band_part(v: OpView) -> Run:
    lower, upper = int(v.attr("lower", -1)), int(v.attr("upper", -1))
    rows, cols = v.in_shape("x")[-2:]

    def run(a: dict[str, Any]) -> torch.Tensor:
        x = a["x"]
        i = torch.arange(rows, device=x.device)[:, None]
        j = torch.arange(cols, device=x.device)[None, :]
        keep = torch.ones(rows, cols, dtype=torch.bool, device=x.device)
        if lower >= 0:
            keep &= (i - j) <= lower
        if upper >= 0:
            keep &= (j - i) <= upper
        return x * keep.to(x.dtype)

    return run


@builder("shape", layout=True)
def _shape(v: OpView) -> Run:
    return lambda a: torch.tensor(list(a["x"].shape), dtype=torch.int32, device=a["x"].device)


@builder("fill", layout=True)
def _fill(v: OpView) -> Run:
    shape = _static(v)
    value = v.fval("value", 0.0)
    dtype = TORCH_DTYPES.get(v.out[0].dtype, torch.float32)
    device = v.device
    return lambda a: torch.full(shape, value, dtype=dtype, device=device)


@builder("range_1d", layout=True)
def _range_1d(v: OpView) -> Run:
    start, end, step = v.attr("start"), v.attr("end"), v.attr("step")
    dtype = TORCH_DTYPES.get(v.out[0].dtype, torch.float32)
    device = v.device
    return lambda a: torch.arange(start, end, step, dtype=dtype, device=device)


@builder("one_hot")
def _one_hot(v: OpView) -> Run:
    size = int(v.attr("one_hot_vector_size"))
    axis = int(v.attr("axis", -1))
    on, off = v.fval("on_value", 1.0), v.fval("off_value", 0.0)

    def run(a: dict[str, Any]) -> torch.Tensor:
        oh = F.one_hot(a["indices"].long(), size).to(torch.float32)
        y = oh * (on - off) + off
        return torch.movedim(y, -1, axis) if axis != -1 else y

    return run


@builder("topk")
def _topk(v: OpView) -> Run:
    k = int(v.attr("k", 1))
    axis = int(v.attr("axis", -1))
    ascending = bool(v.attr("ascending", False))

    def run(a: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        vals, idx = torch.topk(a["x"], k, dim=axis, largest=not ascending, sorted=True)
        return vals, idx.to(torch.int32)

    return run


# scatter / gather ------------------------------------------------------------------------------------


def _scatter_into(out: torch.Tensor, axis: int, idx: torch.Tensor, upd: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "update":
        return out.index_copy(axis, idx, upd)
    if mode == "add":
        return out.index_add(axis, idx, upd)
    if mode == "sub":
        return out.index_add(axis, idx, -upd)
    if mode == "mul":
        return out.index_reduce(axis, idx, upd, "prod")
    if mode == "div":
        return out.index_reduce(axis, idx, torch.reciprocal(upd), "prod")
    if mode in ("max", "min"):
        return out.index_reduce(axis, idx, upd, "amax" if mode == "max" else "amin")
    raise ValueError(f"scatter mode {mode!r}")


@builder("scatter")
def _scatter(v: OpView) -> Run:
    axis = int(v.attr("axis", 0)) % len(v.in_shape("data"))
    mode = v.attr("mode", "add")
    dim = v.in_shape("data")[axis]

    def run(a: dict[str, Any]) -> torch.Tensor:
        data, upd = a["data"], a["updates"]
        idx = a["indices"].long().reshape(-1)
        idx = torch.where(idx < 0, idx + dim, idx)
        upd = upd.reshape(*data.shape[:axis], idx.numel(), *data.shape[axis + 1:])
        return _scatter_into(data, axis, idx, upd.to(data.dtype), mode)

    return run


@builder("scatter_along_axis")
def _scatter_along_axis(v: OpView) -> Run:
    axis = int(v.attr("axis", 0))
    mode = v.attr("mode", "add")
    dim = v.in_shape("data")[axis]
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}

    def run(a: dict[str, Any]) -> torch.Tensor:
        data, upd = a["data"], a["updates"]
        idx = a["indices"].long()
        idx = torch.where(idx < 0, idx + dim, idx)
        if mode == "update":
            return data.scatter(axis, idx, upd)
        if mode == "sub":
            return data.scatter_reduce(axis, idx, -upd, "sum")
        if mode == "div":
            return data.scatter_reduce(axis, idx, torch.reciprocal(upd), "prod")
        return data.scatter_reduce(axis, idx, upd, reduce[mode])

    return run


@builder("gather_nd", layout=True)
def _gather_nd(v: OpView) -> Run:
    shape = _static(v)
    x_shape = v.in_shape("x")

    def run(a: dict[str, Any]) -> torch.Tensor:
        x, idx = a["x"], a["indices"].long()
        k = idx.shape[-1]
        flat_idx = idx.reshape(-1, k)
        dims = torch.tensor(x_shape[:k], device=idx.device)
        flat_idx = torch.where(flat_idx < 0, flat_idx + dims, flat_idx)
        return x[tuple(flat_idx[:, i] for i in range(k))].reshape(shape)

    return run


@builder("scatter_nd")
def _scatter_nd(v: OpView) -> Run:
    mode = v.attr("mode", "add")

    def run(a: dict[str, Any]) -> torch.Tensor:
        data, idx, upd = a["data"], a["indices"].long(), a["updates"]
        k = idx.shape[-1]
        flat = idx.reshape(-1, k)
        strides = torch.tensor([math.prod(data.shape[i + 1: k]) for i in range(k)], device=idx.device)
        lin = (flat * strides).sum(-1)
        view = data.reshape(-1, *data.shape[k:])
        out = _scatter_into(view, 0, lin, upd.reshape(-1, *data.shape[k:]).to(data.dtype), mode)
        return out.reshape(data.shape)

    return run
