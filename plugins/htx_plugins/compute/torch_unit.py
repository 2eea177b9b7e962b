"""``torch`` compute unit: the inner model in PyTorch with the precision assignment applied per aten op.

Every aten op call of one forward pass is an op instance named ``<mil_type>_<k>`` (the k-th op of that
MIL type in execution order, so names are stable for a given model, surgery and input shape). An op
assigned low precision gets its floating inputs cast to ``low_dtype`` and its floating outputs cast back
to FP32, the same semantics as Core ML's ``FP16ComputePrecision``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from htx.api import (
    Assignment,
    ComputeUnit,
    InnerModel,
    OpInfo,
    OpStats,
    Params,
    Placement,
    is_compute,
    mil_type_for_aten,
    module_stack,
    number_ops,
    placement_runs,
    project_noise,
    squares_input,
)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _op_name(counter: Counter[str], func: Any, args: tuple) -> tuple[str | None, str]:
    """``(mil type, "<mil type>_<k>")`` of an aten call (the k-th of its type this pass), ``(None, "")`` for
    calls that are not ops (views, metadata)."""
    mil = mil_type_for_aten(func, args)
    if mil is None:
        return None, ""
    name = f"{mil}_{counter[mil]}"
    counter[mil] += 1
    return mil, name


class _OpMode(TorchDispatchMode):
    """Names each aten op call, optionally lists it, casts it, and records output statistics."""

    def __init__(
        self,
        fp16: frozenset[str] = frozenset(),
        low_dtype: torch.dtype = torch.float16,
        listing: list[OpInfo] | None = None,
        module_stack: list[str] | None = None,
        stats: dict[str, OpStats] | None = None,
        weight_cache: dict[Any, torch.Tensor] | None = None,
        reduce_group_norm: bool = False,
        group_norm_chunks: int = 1,
        lazy: bool = False,
        host_cache: dict[Any, torch.Tensor] | None = None,
        cast_counter: Counter[str] | None = None,
        cache_weights: bool = True,
    ) -> None:
        super().__init__()
        # False while a tracer runs the model (torch.export): its parameters are fake tensors, and every cast
        # is recorded in the program instead
        self.cache_weights = cache_weights
        self.cast_counter = cast_counter
        # Constants that the model builds on the host and copies to the GPU on every call (demucs's 2-D
        # positional embedding): keep one device copy per content, so the forward can be a CUDA graph.
        self.host_cache = host_cache
        self.reduce_group_norm = reduce_group_norm
        self.group_norm_chunks = group_norm_chunks
        # lazy: low-precision outputs stay low until an FP32 op needs them. Exactly the values of
        # casting every FP16 op's output back to FP32 (the round trip FP16 -> FP32 -> FP16 is lossless),
        # without the memory traffic of a cast pair around every op.
        self.lazy = lazy
        self.fp16 = fp16
        self.low = low_dtype
        self.listing = listing
        self.module_stack = module_stack
        self.stats = stats
        self.counter: Counter[str] = Counter()
        self.weight_cache = weight_cache if weight_cache is not None else {}

    def _to_low(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
            if t.requires_grad and self.cache_weights:  # a parameter: cast once per compiled assignment
                key = (t.data_ptr(), tuple(t.shape), t._version)
                cached = self.weight_cache.get(key)
                if cached is None:
                    cached = t.detach().to(self.low)
                    self.weight_cache[key] = cached
                return cached
            if self.cast_counter is not None:
                self.cast_counter["casts"] += 1
            return t.to(self.low)
        return t

    def _cached_host_copy(self, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dev = kwargs.get("device")
        if t.device.type != "cpu" or dev is None or torch.device(dev).type == "cpu" or t.numel() > 1 << 24:
            return torch.ops.aten._to_copy.default(t, **kwargs)
        key = (tuple(t.shape), t.dtype, str(kwargs), hash(t.contiguous().numpy().tobytes()))
        cached = self.host_cache.get(key)
        if cached is None:
            cached = torch.ops.aten._to_copy.default(t, **kwargs)
            self.host_cache[key] = cached
        return cached

    def _to_high(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dtype == self.low:
            if self.cast_counter is not None:
                self.cast_counter["casts"] += 1
            if t.is_contiguous():
                return t.to(torch.float32)
            broadcast = [d for d, (n, s) in enumerate(zip(t.shape, t.stride())) if s == 0 and n > 1]
            if broadcast:
                # An expanded view (stride 0) cannot be written into: upcast what it views, then expand again
                # (what the per-op cast-back did: the FP32 copy was made before the expand).
                base = t
                for d in broadcast:
                    base = base.narrow(d, 0, 1)
                return self._to_high(base).expand(t.shape)
            # Keep the view's strides: kernels take other (1-ulp different) paths on other layouts.
            return torch.empty_strided(t.size(), t.stride(), dtype=torch.float32, device=t.device).copy_(t)
        return t

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        mil, name = _op_name(self.counter, func, args)
        if mil is None:
            return func(*args, **kwargs)
        if self.listing is not None:
            info: dict[str, Any] = {"aten": str(func)}
            if squares_input(func):
                info["squares"] = True
            module = self.module_stack[-1] if self.module_stack else ""
            self.listing.append(OpInfo(name, mil, is_compute(mil), info, module))
        impl = func
        if self.host_cache is not None and func is torch.ops.aten._to_copy.default:
            impl = self._cached_host_copy
        if self.reduce_group_norm and func is torch.ops.aten.native_group_norm.default:
            impl = functools.partial(_group_norm_by_reductions, chunks_up_to=self.group_norm_chunks)
        mutable = func._schema.is_mutable and bool(args) and isinstance(args[0], torch.Tensor)
        if name in self.fp16:
            low_args = tree_map(self._to_low, args)
            low_kwargs = tree_map(self._to_low, kwargs)
            out = impl(*low_args, **low_kwargs)
            if mutable and low_args[0] is not args[0]:
                # In-place op: write the low-precision result back into the tensor it mutates.
                args[0].copy_(out if isinstance(out, torch.Tensor) else out[0])
                out = args[0]
            elif not self.lazy:
                out = tree_map(self._to_high, out)
        elif self.lazy and is_compute(mil) and _has_low(args, kwargs, self.low):
            # An FP32 op fed by low-precision tensors: upcast (exact), as the per-op cast-back would have.
            high_args = tree_map(self._to_high, args)
            out = impl(*high_args, **tree_map(self._to_high, kwargs))
            if mutable and high_args[0] is not args[0]:
                args[0].copy_(out if isinstance(out, torch.Tensor) else out[0])
                out = args[0]
        else:
            out = impl(*args, **kwargs)
        if self.stats is not None:
            self._record(name, mil, args, out)
        return out

    def _record(self, name: str, mil: str, args: tuple, out: Any) -> None:
        st = OpStats()
        for t in _tensors(out):
            if t.is_floating_point():
                tf = t.detach().float()
                st.nan += int(torch.isnan(tf).sum())
                st.inf += int(torch.isinf(tf).sum())
                fin = tf[torch.isfinite(tf)]
                if fin.numel():
                    st.max_abs = max(st.max_abs, float(fin.abs().max()))
        for t in _tensors(args):
            if t.is_floating_point() and not t.requires_grad:
                tf = t.detach().float()
                if not bool(torch.isfinite(tf).all()):
                    st.inputs_finite = False
                fin = tf[torch.isfinite(tf)]
                if fin.numel():
                    st.max_abs_input = max(st.max_abs_input, float(fin.abs().max()))
        if mil.startswith("reduce_") or mil in ("softmax", "layer_norm", "group_norm", "l2_norm"):
            ins = [t for t in _tensors(args) if t.is_floating_point()]
            outs = [t for t in _tensors(out) if t.is_floating_point()]
            if mil == "softmax" and ins and len(args) > 1 and isinstance(args[1], int):
                st.reduction_size = int(ins[0].shape[args[1]])
            elif ins and outs and min(o.numel() for o in outs):
                # Norms return (out, mean, rstd): the smallest output (the statistics) gives the group size.
                st.reduction_size = max(1, ins[0].numel() // min(o.numel() for o in outs))
        self.stats[name] = st


class _NoiseMode(TorchDispatchMode):
    """Runs every op in FP32 and, for each compute op, also in low precision from the same inputs: keeps the
    local error ``e_i`` (low output minus FP32 output) and the FP32 output, whose gradient a backward pass
    then gives (see :meth:`TorchUnit.fp16_noise`)."""

    def __init__(self, low_dtype: torch.dtype) -> None:
        super().__init__()
        self.low = low_dtype
        self.counter: Counter[str] = Counter()
        self.outputs: dict[str, torch.Tensor] = {}
        self.errors: dict[str, torch.Tensor] = {}
        self.overflow: set[str] = set()

    def _low(self, t: Any) -> Any:
        return t.detach().to(self.low) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        mil, name = _op_name(self.counter, func, args)
        if mil is None or not is_compute(mil):
            return func(*args, **kwargs)
        # The low-precision pass first: an in-place op would otherwise see its own FP32 result.
        low = func(*tree_map(self._low, args), **tree_map(self._low, kwargs))
        out = func(*args, **kwargs)
        if not any(t.requires_grad for t in _tensors(args) + _tensors(kwargs)):
            # Built from constants alone (positions, a window, an arange): autograd records nothing here,
            # so make the output a leaf that requires grad, or this op's error would have no gradient.
            for t in _tensors(out):
                if t.is_floating_point():
                    t.requires_grad_(True)
        lo = next((t for t in _tensors(low) if t.is_floating_point()), None)
        hi = next((t for t in _tensors(out) if t.is_floating_point()), None)
        if lo is not None and hi is not None and lo.shape == hi.shape:
            lo32 = lo.detach().float()
            if not bool(torch.isfinite(lo32).all()) and bool(torch.isfinite(hi.detach()).all()):
                self.overflow.add(name)
            else:
                self.errors[name] = lo32 - hi.detach()
                if not (func._schema.is_mutable and args and args[0] is hi):
                    self.outputs[name] = hi  # autograd sets its history after this returns: same object
        return out


#: experiment switch for gpu_graph_passes.py's 'chunked last dim' variant (the rule of df64d55): chunk the last
#: dim alone, for every row count. Never set by the unit.
_CHUNK_LAST_DIM_ONLY = False


def _group_norm_by_reductions(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, N: int, C: int, HxW: int, group: int, eps: float,
    chunks_up_to: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``aten.native_group_norm`` through parallel reduction kernels.

    PyTorch's CUDA group norm computes each (sample, group) row's moments in one thread block, so
    ``GroupNorm(1, C)`` on a large activation runs on a handful of SMs. Same math and the same internal
    FP32 accumulation as the native kernel, with inputs/outputs in the caller's dtype.

    ``chunks_up_to`` > 1 (``group_norm: chunked``): a spatial dim (or the group's channels, see below) is cut
    into ``k`` equal chunks (``k`` a divisor up to ``chunks_up_to``), each chunk's moments are reduced first and then
    combined (the mean of the chunk variances plus the variance of the chunk means, exact for equal counts), so
    a group norm of a few long rows (one group, a batch of 8) becomes ``k`` times as many short reductions.
    """
    # Layout-agnostic: the channel dim is split into groups (a view in any layout) and each group's moments are
    # reduced over its dims in place, so a channels-last input (``channels_last: true``) is read as it lies
    # instead of being copied to contiguous first.
    xf = x.float().unflatten(1, (group, C // group))  # [N, group, C/group, *S]
    # The spatial dim with the most equal chunks (up to chunks_up_to; the last one on a tie). Where none gives 16
    # (the time branch's 1723 and 6891 samples: a prime, 3 x 2297), the group's channels are chunked instead.
    def most_chunks(size: int) -> int:
        return max(d for d in range(1, chunks_up_to + 1) if size % d == 0)

    k, at = 1, xf.ndim
    if _CHUNK_LAST_DIM_ONLY:  # the rule of df64d55, kept for the graph-pass script to time against
        k, at = (most_chunks(xf.shape[-1]), xf.ndim - 1) if x.ndim > 2 else (1, at)
    elif N * group < 1024:  # only few rows: the frequency branch folds its bins into the batch (thousands already)
        for dim in range(xf.ndim - 1, 2, -1):
            if most_chunks(xf.shape[dim]) > k:
                k, at = most_chunks(xf.shape[dim]), dim
        if k < 16 and most_chunks(xf.shape[2]) > k:
            k, at = most_chunks(xf.shape[2]), 2
    if k > 1:
        xc = xf.unflatten(at, (k, xf.shape[at] // k))  # [N, group, C/group, ..., k, dim/k, ...]
        dims = tuple(d for d in range(2, xc.ndim) if d != at)
        v, m = torch.var_mean(xc, dim=dims, correction=0)  # [N, group, k]
        mean = m.mean(-1)
        var = v.mean(-1) + (m - mean[..., None]).pow(2).mean(-1)
    else:
        var, mean = torch.var_mean(xf, dim=tuple(range(2, x.ndim + 1)), correction=0)
    rstd = torch.rsqrt(var + eps)  # [N, group]
    # Fold normalization and affine into one multiply-add per element: y = x * a + c.
    a = rstd.repeat_interleave(C // group, dim=1)  # [N, C]
    c = -mean.repeat_interleave(C // group, dim=1) * a
    if weight is not None:
        a = a * weight.float()[None]
        c = c * weight.float()[None]
    if bias is not None:
        c = c + bias.float()[None]
    per_channel = (N, C) + (1,) * (x.ndim - 2)
    y = torch.addcmul(c.reshape(per_channel).to(x.dtype), x, a.reshape(per_channel).to(x.dtype))
    return y, mean.to(x.dtype), rstd.to(x.dtype)  # y is in x's dtype already; stats are [N, group]


_CONV_FUNCS = {F.conv1d: "conv", F.conv2d: "conv", F.conv_transpose1d: "conv_transpose", F.conv_transpose2d: "conv_transpose"}
_SDPA_FUNCS = {F.scaled_dot_product_attention}


class _LazyCompositeMode(TorchFunctionMode):
    """With lazy casts, make composite ops that check dtypes *before* dispatch see consistent dtypes.

    ``F.conv1d`` and friends compare the input's dtype with the weight's, and ``F.scaled_dot_product_attention``
    compares query/key/value, before the aten op reaches the dispatch mode. Knowing which op instance comes
    next (the dispatch mode's counter), cast that op's tensor arguments to its assigned dtype here.
    """

    def __init__(self, op_mode: _OpMode) -> None:
        super().__init__()
        self.op_mode = op_mode

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            # It calls scaled_dot_product_attention itself, while this mode is off (a mode does not see the
            # calls its own handler makes): route that call through the cast below. q comes from one
            # projection and k/v from another, so with FP32 and FP16 projections they would not match.
            sdpa = F.scaled_dot_product_attention

            def cast_sdpa(*a: Any, **kw: Any) -> Any:
                return self.__torch_function__(sdpa, types, a, kw)

            F.scaled_dot_product_attention = cast_sdpa
            try:
                return func(*args, **kwargs)
            finally:
                F.scaled_dot_product_attention = sdpa
        mil = _CONV_FUNCS.get(func) if func in _CONV_FUNCS else ("scaled_dot_product_attention" if func in _SDPA_FUNCS else None)
        if mil is not None:
            m = self.op_mode
            name = f"{mil}_{m.counter[mil]}"
            cast = m._to_low if name in m.fp16 else m._to_high
            args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
        return func(*args, **kwargs)


def _has_low(args: Any, kwargs: Any, low: torch.dtype) -> bool:
    return any(t.dtype == low for t in _tensors(args) + _tensors(kwargs))


def _tensors(x: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, torch.Tensor) else None, x)
    return found


class TorchParams(Params):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    low_dtype: Literal["fp16", "bf16"] = "fp16"
    #: On CUDA, capture the forward (casts included) once per input shape into a CUDA graph and replay
    #: it: removes the per-op Python cost of the precision dispatch, which dominates on fast GPUs.
    cuda_graphs: bool = True
    #: ``reduce`` computes group norm with parallel reductions (same math); ``chunked`` = reduce with each row's
    #: moments combined from up to 64 equal chunks of its last dim (exact combination; many short reductions
    #: instead of a few long ones). ``auto``: chunked on CUDA with ``compile: inductor`` (H100, full size, 60 s,
    #: all-FP16 compiled: 25.5 vs 27.6 ms, GPU time 24.4 vs 26.0 ms in one run; gpu_h100_graph_passes.json),
    #: reduce on CUDA eager, native elsewhere.
    group_norm: Literal["auto", "native", "reduce", "chunked"] = "auto"
    #: ``lazy`` keeps FP16 results in FP16 between FP16 ops (bit-identical to ``per-op`` cast-back).
    casts: Literal["lazy", "per-op"] = "lazy"
    #: On CUDA, let FP32 convolutions and matmuls run in TF32 (10-bit mantissa, like FP16). Off by default:
    #: an FP32 op means FP32 here, and the FP32 reference is computed without TF32 too.
    tf32: bool = False
    #: ``inductor``: the assignment-typed forward (casts included, low-precision weights cast once) is traced
    #: into an aten graph and compiled with ``torch.compile`` once per (assignment, input shape): casts and
    #: neighbouring elementwise ops fuse; on CUDA the compiled graph is replayed as a CUDA graph. Trials
    #: (fixed policies, a search's answer) run compiled; a search's evaluations keep the eager path, which is
    #: fast to rebuild. Compile time is reported apart (``compile_s``), never inside latency.
    compile: Literal["off", "inductor"] = "off"
    #: ``compile: inductor`` only (unused with ``compile: off``): the traced graph's convolutions take
    #: channels-last inputs and weights (a 1-D convolution as a 2-D one of height 1), so cuDNN's NHWC kernels
    #: need no layout transposes of their own and inductor writes their inputs in that layout. Same numerics
    #: up to float rounding. Measured on an H100 (full size, 60 s; experiments/benchmarks/gpu_h100_quick.json):
    #: the bisect answer 26.3 vs 29.4 ms in one run, GPU time 27.0 vs 28.4 ms. ``auto`` (the default): on CUDA
    #: only (on a 2-core CPU the small model's compiled segment graph took 598-617 ms with it, 535-542 without).
    channels_last: bool | Literal["auto"] = "auto"
    #: ``compile: inductor`` only: convolutions whose input or output channel count is not a multiple of 8
    #: (HTDemucs's DConv bottlenecks of 6 and 12 channels, the 2- and 4-channel first layers) get zero channels
    #: up to the next multiple (zero weights, zero inputs; the extra outputs sliced off), so cuDNN can pick its
    #: tensor-core kernels. Same numerics up to float rounding. Measured no gain on an H100 (GPU time 26.9 vs
    #: 27.0 ms with channels-last; gpu_h100_graph_passes.json): off by default.
    pad_channels: bool = False
    #: ``compile: inductor`` on CUDA only: cuDNN times its algorithms for each convolution shape while the
    #: graph is compiled (``torch.backends.cudnn.benchmark``) and the CUDA graph keeps the fastest. Adds
    #: seconds to ``compile_s``, never to latency. Measured no gain on an H100 (27.1 vs 27.0 ms GPU time with
    #: channels-last): off by default.
    cudnn_benchmark: bool = False
    #: ``compile: inductor`` only: inductor's max-autotune (each convolution and matmul timed against Triton
    #: templates, the fastest kept; the picks are kept in inductor's cache, TORCHINDUCTOR_CACHE_DIR, so a
    #: later compile of the same shapes reuses them). Adds minutes to ``compile_s``, never to latency. Latency
    #: not measured yet: with coordinate-descent tuning of every Triton kernel as well, the full model's
    #: compile ran past 4 minutes on an H100 (Triton templates had beaten cuDNN/cuBLAS for 25 of the 33
    #: convolution and matmul shapes tuned by then); without it, as here, it is not timed yet.
    autotune: bool = False


def inductor_available(device: torch.device) -> tuple[bool, str]:
    """Whether ``torch.compile``'s inductor backend can compile for ``device`` here, and why not."""
    import shutil

    fix = "or set compile: off"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, f"compile: inductor on CUDA needs Triton (pip install triton), {fix}"
    elif device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return False, f"compile: inductor on the CPU needs a C++ compiler (apt install g++), {fix}"
    else:
        return False, f"compile: inductor runs on cpu or cuda, not {device.type}; {fix}"
    return True, ""


@contextlib.contextmanager
def _cuda_switches(device: torch.device, switches: list[tuple[Any, str]], value: bool) -> Iterator[None]:
    """Set each ``(module, attribute)`` switch to ``value`` for the duration, restored after (no-op off CUDA)."""
    if device.type != "cuda":
        yield
        return
    saved = [getattr(owner, name) for owner, name in switches]
    for owner, name in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), old in zip(switches, saved):
            setattr(owner, name, old)


def tf32_allowed(device: torch.device, allowed: bool) -> contextlib.AbstractContextManager[None]:
    """Set cuDNN's and cuBLAS's TF32 switches for the duration (no-op off CUDA)."""
    return _cuda_switches(device, [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")], allowed)


def cudnn_benchmark(device: torch.device, on: bool) -> contextlib.AbstractContextManager[None]:
    """Set ``torch.backends.cudnn.benchmark`` for the duration (no-op off CUDA)."""
    return _cuda_switches(device, [(torch.backends.cudnn, "benchmark")], on)


class _Graphed:
    """Replays a CUDA graph of ``fn`` per input shape; falls back to ``fn`` when capture fails."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.graphs: dict[tuple, tuple[Any, list[torch.Tensor], Any]] = {}
        self.failed: str | None = None

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, list[torch.Tensor], Any]:
        static_in = [t.clone() for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up fills the weight cache and cuDNN autotuning outside the graph
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self.failed is not None:
            return self.fn(*inputs)
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(inputs)
            except Exception as exc:  # capture is an optimization: never a reason to fail a trial
                self.failed = f"{type(exc).__name__}: {exc}"
                return self.fn(*inputs)
        graph, static_in, static_out = self.graphs[key]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, static_out)


#: Compiled assignments a unit keeps (each holds its graphs and low-precision weight copies).
_COMPILED_KEPT = 4


def channels_last_convolutions(gm: Any, constant_weights: bool = True) -> tuple[int, int]:
    """Rewrite an aten graph's convolutions to take channels-last inputs and weights: 2-D ones directly, 1-D
    ones as 2-D convolutions of height 1 (unsqueeze, convolve, squeeze). Returns (2-D, 1-D) counts rewritten.

    A convolution's output then keeps the channels-last strides, which a ``view`` traced on contiguous tensors
    (group norm's reshapes) cannot take: every ``view`` of the graph becomes a ``reshape`` (a view where the
    strides allow one, a copy inductor can fuse where not)."""
    aten = torch.ops.aten
    g = gm.graph
    n2 = n1 = 0
    laid_out: dict[str, Any] = {}
    for node in list(g.nodes):
        if node.op != "call_function" or node.target != aten.convolution.default:
            continue
        x, w, b, stride, pad, dil, transposed, opad, groups = node.args
        val = x.meta.get("val") if hasattr(x, "meta") else None
        dims = getattr(val, "ndim", None)
        if dims not in (3, 4):
            continue
        with g.inserting_before(node):
            if dims == 3:
                x = g.call_function(aten.unsqueeze.default, (x, 2))
            xc = g.call_function(aten.clone.default, (x,), {"memory_format": torch.channels_last})
            if constant_weights and w.op == "get_attr":  # a weight constant: laid out once, not copied per call
                if w.target not in laid_out:
                    t = _constant(gm, w)
                    laid_out[w.target] = _new_constant(gm, (t.unsqueeze(2) if dims == 3 else t).contiguous(
                        memory_format=torch.channels_last), "_htx_nhwc")
                wc = laid_out[w.target]
            else:
                w = g.call_function(aten.unsqueeze.default, (w, 2)) if dims == 3 else w
                wc = g.call_function(aten.clone.default, (w,), {"memory_format": torch.channels_last})
            if dims == 4:
                node.args = (xc, wc, b, stride, pad, dil, transposed, opad, groups)
                n2 += 1
                continue
            conv = g.call_function(aten.convolution.default, (xc, wc, b, [1, *stride], [0, *pad], [1, *dil], transposed,
                                                              [0, *opad], groups))
            out = g.call_function(aten.squeeze.dim, (conv, 2))
        node.replace_all_uses_with(out)
        g.erase_node(node)
        n1 += 1
    if n1 or n2:
        for node in g.nodes:
            if node.op == "call_function" and node.target == aten.view.default:
                node.target = aten.reshape.default
    g.lint()
    return n2, n1


def _meta(node: Any, like: Any, shape: Any) -> Any:
    """``node`` with a shape-only ``val`` (what the later passes read), typed like ``like``."""
    node.meta["val"] = torch.empty(tuple(shape), dtype=like.dtype, device="meta")
    return node


def _constant(gm: Any, node: Any) -> torch.Tensor:
    """The tensor a ``get_attr`` node of ``gm`` reads."""
    owner = gm
    *path, leaf = node.target.split(".")
    for part in path:
        owner = getattr(owner, part)
    return getattr(owner, leaf)


def _new_constant(gm: Any, tensor: torch.Tensor, prefix: str) -> Any:
    """A ``get_attr`` node (inserted where the graph's insert point is) reading ``tensor``, a new buffer of ``gm``
    named ``prefix_k``."""
    k = 0
    while hasattr(gm, f"{prefix}_{k}"):
        k += 1
    gm.register_buffer(f"{prefix}_{k}", tensor)
    node = gm.graph.get_attr(f"{prefix}_{k}")
    node.meta["val"] = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    return node


def _padded_constant(gm: Any, node: Any, pad: list[int]) -> Any:
    """``node`` zero-padded by ``pad`` (``F.pad`` order): a new graph constant when ``node`` is one, else a
    ``constant_pad_nd`` node."""
    g = gm.graph
    val = node.meta["val"]
    shape = list(val.shape)
    for k in range(len(pad) // 2):
        shape[-1 - k] += pad[2 * k] + pad[2 * k + 1]
    if node.op == "get_attr":
        return _new_constant(gm, torch.nn.functional.pad(_constant(gm, node), pad), "_htx_padded")
    return _meta(g.call_function(torch.ops.aten.constant_pad_nd.default, (node, pad, 0.0)), val, shape)


def pad_thin_convolutions(gm: Any, multiple: int = 8) -> int:
    """Rewrite an aten graph's (non-transposed, ungrouped) convolutions whose input or output channel count is
    not a multiple of ``multiple``: the input and the weight get zero channels up to it, the extra output
    channels (zero weights, zero bias) are sliced off. Returns how many convolutions were rewritten."""
    aten = torch.ops.aten
    g = gm.graph
    n = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target != aten.convolution.default:
            continue
        x, w, b, stride, pad, dil, transposed, opad, groups = node.args
        xv, wv = (getattr(a, "meta", {}).get("val") for a in (x, w))
        if xv is None or wv is None or transposed or groups != 1:
            continue
        cout, cin = wv.shape[0], wv.shape[1]
        pin, pout = -cin % multiple, -cout % multiple
        if not (pin or pout):
            continue
        spatial = [0, 0] * (wv.ndim - 2)
        with g.inserting_before(node):
            if pin:
                x = _padded_constant(gm, x, spatial + [0, pin])
            w = _padded_constant(gm, w, spatial + [0, pin, 0, pout])
            if pout and b is not None:
                b = _padded_constant(gm, b, [0, pout])
            out_shape = list(node.meta["val"].shape)
            conv = _meta(g.call_function(aten.convolution.default, (x, w, b, stride, pad, dil, transposed, opad, groups)),
                         node.meta["val"], [out_shape[0], cout + pout, *out_shape[2:]])
            out = _meta(g.call_function(aten.slice.Tensor, (conv, 1, 0, cout)), node.meta["val"], out_shape) if pout else conv
        node.replace_all_uses_with(out)
        g.erase_node(node)
        n += 1
    g.lint()
    return n


class _Compiled:
    """An assignment's eager forward, traced into an aten graph (its casts included) and compiled with
    ``torch.compile`` (inductor) once per input shape; on CUDA the compiled graph is replayed as a CUDA graph.

    The trace runs the eager forward under ``make_fx``: the dispatch mode's casts become graph nodes, the
    low-precision weight copies (cast once, before the trace) and the device copies of host-built constants
    become graph constants, so a call runs no cast of a weight and no host-to-device copy. ``compile_s`` is the
    total time spent tracing and compiling (first call per shape), kept out of any latency.
    """

    def __init__(self, eager: Any, graphs: bool, device: torch.device, params: TorchParams) -> None:
        self.eager = eager
        self.graphs = graphs
        self.device, self.params = device, params
        self.by_shape: dict[tuple, Any] = {}
        self.compile_s = 0.0

    def _build(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        import time

        from torch.fx.experimental.proxy_tensor import make_fx

        t0 = time.perf_counter()
        with torch.no_grad():
            self.eager(*inputs)  # fills the weight and host-copy caches outside the trace
            with tf32_allowed(self.device, self.params.tf32):
                gm = make_fx(self.eager)(*inputs)
        gm.graph.eliminate_dead_code()  # host-side constant building whose device copy is cached
        if self.params.pad_channels:
            pad_thin_convolutions(gm)
        if self.params.channels_last is True or (self.params.channels_last == "auto" and self.device.type == "cuda"):
            channels_last_convolutions(gm)
        gm.recompile()
        # coordinate-descent tuning stays off: it did not finish compiling the full model in 9 minutes on an H100
        options = {"max_autotune": True} if self.params.autotune else None
        compiled = torch.compile(gm, backend="inductor", fullgraph=True, dynamic=False, options=options)
        tf32, benchmark, device = self.params.tf32, self.params.cudnn_benchmark, self.device

        def run(*args: torch.Tensor) -> Any:
            # cuDNN's benchmark picks at the warm-up calls before capture; the CUDA graph replays its picks
            with torch.no_grad(), tf32_allowed(device, tf32), cudnn_benchmark(device, benchmark):
                return compiled(*args)

        fn: Any = _Graphed(run) if self.graphs else run
        fn(*inputs)  # compiles (and captures the CUDA graph) now, not inside a timed call
        if self.graphs and fn.failed:
            raise RuntimeError(f"CUDA graph capture of the compiled forward failed: {fn.failed}")
        self.compile_s += time.perf_counter() - t0
        return fn

    def __call__(self, *inputs: torch.Tensor) -> Any:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        fn = self.by_shape.get(key)
        if fn is None:
            fn = self.by_shape[key] = self._build(inputs)
        return fn(*inputs)


class Prepared:
    def __init__(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], ops: list[OpInfo]) -> None:
        self.inner = inner
        self.example_inputs = example_inputs
        self.op_list = ops
        #: placement per FP16 set: counting casts runs a forward pass, and a grid's trials share assignments
        self.placements: dict[frozenset[str], Placement] = {}


class TorchUnit(ComputeUnit):
    """PyTorch eager execution with per-op FP16/BF16 casting.

    Example config::

        compute:
          - torch                                   # device auto: cuda, then mps, then cpu
          - torch: {device: cpu, low_dtype: bf16}
    """

    name = "torch"
    Params = TorchParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._compiled: dict[tuple, _Compiled] = {}

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params.device)

    @property
    def low_dtype(self) -> torch.dtype:
        return torch.float16 if self.params.low_dtype == "fp16" else torch.bfloat16

    @property
    def runtime(self) -> str:
        low = "" if self.params.low_dtype == "fp16" else f":{self.params.low_dtype}"
        compiled = ":inductor" if self.params.compile == "inductor" else ""
        return f"torch:{self.device.type}{low}{compiled}"

    @property
    def low_precision(self) -> str:
        return self.params.low_dtype

    def resources(self) -> dict[str, float]:
        # Ray schedules `cuda` trials on GPU workers and `mps` ones on Macs (custom resource `macos`);
        # `auto` runs wherever it lands and uses what that worker has.
        return {"cuda": {"GPU": 1.0}, "mps": {"macos": 1.0}}.get(self.params.device, {})

    def available(self) -> tuple[bool, str]:
        dev = self.params.device
        if dev == "cuda" and not torch.cuda.is_available():
            return False, "CUDA is not available (no GPU or a CPU-only torch build)"
        if dev == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            return False, "MPS is not available (needs Apple silicon and a macOS torch build)"
        if self.params.compile == "inductor":
            return inductor_available(self.device)
        return True, ""

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Any = None) -> Prepared:
        # The fused MHA fast path would hide attention's ops; Core ML conversion disables it too.
        torch.backends.mha.set_fastpath_enabled(False)
        inner = inner.to(self.device).eval()
        inputs = tuple(t.to(self.device) for t in example_inputs)
        listing: list[OpInfo] = []
        with torch.no_grad(), module_stack(inner) as stack, _OpMode(listing=listing, module_stack=stack):
            inner(*inputs)
        ordinals = number_ops([op.module for op in listing], [op.type for op in listing])
        listing = [dataclasses.replace(op, ordinal=k) for op, k in zip(listing, ordinals)]
        return Prepared(inner, inputs, listing)

    def placement(self, prepared: Prepared, assignment: Assignment) -> Placement:
        """Precision segments in execution order, and the dtype casts one forward pass executes (counted once per
        FP16 set and kept: the trials of other fixtures and STFT backends share it)."""
        key = frozenset(assignment.fp16)
        if key not in prepared.placements:
            prepared.placements[key] = self._placement(prepared, assignment)
        return prepared.placements[key]

    def _placement(self, prepared: Prepared, assignment: Assignment) -> Placement:
        runs = placement_runs(prepared.op_list, assignment)
        counter: Counter[str] = Counter()
        lazy = self.params.casts == "lazy"
        mode = _OpMode(fp16=frozenset(assignment.fp16), low_dtype=self.low_dtype, lazy=lazy, cast_counter=counter)
        fn_mode = _LazyCompositeMode(mode) if lazy and assignment.fp16 else contextlib.nullcontext()
        with tf32_allowed(self.device, self.params.tf32), torch.no_grad(), fn_mode, mode:
            prepared.inner(*prepared.example_inputs)
        return Placement(partitions=runs["partitions"], casts=counter["casts"])

    def ops(self, prepared: Prepared) -> list[OpInfo]:
        return list(prepared.op_list)

    def compile(self, prepared: Prepared, assignment: Assignment) -> Any:
        """The forward a trial runs: compiled with inductor when ``compile: inductor`` (cached per assignment),
        else the eager per-op dispatch (a CUDA graph of it on CUDA)."""
        if self.params.compile == "off":
            return self.search_forward(prepared, assignment)
        return self._cached_compile(prepared, assignment, None)

    def compile_segment(self, prepared: Prepared, assignment: Assignment, wrap: Any) -> Any:
        """With ``compile: inductor``: the whole segment path (``wrap`` of the assignment's eager forward: STFT,
        host steps, model, iSTFT) traced and compiled as one graph, cached like :meth:`compile`."""
        if self.params.compile == "off":
            return None
        return self._cached_compile(prepared, assignment, wrap)

    def _cached_compile(self, prepared: Prepared, assignment: Assignment, wrap: Any) -> _Compiled:
        """The compiled forward (``wrap`` None) or segment path of ``assignment``, kept per assignment (the last
        few): a grid's trials of one assignment (fixtures, STFT backends) compile once."""
        key = (id(prepared), frozenset(assignment.fp16), None if wrap is None else getattr(wrap, "key", id(wrap)))
        cached = self._compiled.pop(key, None)
        if cached is None:
            eager = self._eager(prepared, assignment, host_copies=self.device.type == "cuda")
            cached = _Compiled(eager if wrap is None else wrap(eager), self.device.type == "cuda" and self.params.cuda_graphs,
                               self.device, self.params)
        self._compiled[key] = cached
        while len(self._compiled) > _COMPILED_KEPT:
            self._compiled.pop(next(iter(self._compiled)))
        return cached

    def search_forward(self, prepared: Prepared, assignment: Assignment) -> Any:
        """The forward a search evaluates: the eager per-op dispatch (nothing to compile per assignment)."""
        graphs = self.device.type == "cuda" and self.params.cuda_graphs
        forward = self._eager(prepared, assignment, host_copies=graphs)
        return _Graphed(forward) if graphs else forward

    def _eager(self, prepared: Prepared, assignment: Assignment, host_copies: bool) -> Any:
        torch.backends.mha.set_fastpath_enabled(False)
        inner = prepared.inner
        fp16 = frozenset(assignment.fp16)
        weight_cache: dict[Any, torch.Tensor] = {}
        low = self.low_dtype
        gn = self.params.group_norm
        cuda = self.device.type == "cuda"
        reduce_gn = gn in ("reduce", "chunked") or (gn == "auto" and cuda)
        gn_chunks = 64 if gn == "chunked" or (gn == "auto" and cuda and self.params.compile == "inductor") else 1
        lazy = self.params.casts == "lazy"
        host_cache: dict[Any, torch.Tensor] | None = {} if host_copies else None
        dev, tf32 = self.device, self.params.tf32

        def forward(*inputs: torch.Tensor) -> Any:
            with tf32_allowed(dev, tf32):  # at capture time too: a CUDA graph replays the kernels it captured
                return _forward(*inputs)

        def _forward(*inputs: torch.Tensor) -> Any:
            if not fp16 and not reduce_gn and not host_copies:
                with torch.no_grad():
                    return inner(*inputs)
            mode = _OpMode(fp16=fp16, low_dtype=low, weight_cache=weight_cache, reduce_group_norm=reduce_gn,
                           group_norm_chunks=gn_chunks, lazy=lazy,
                           host_cache=host_cache)
            fn_mode = _LazyCompositeMode(mode) if lazy and fp16 else contextlib.nullcontext()
            with torch.no_grad(), fn_mode, mode:
                out = inner(*inputs)
            return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == low else t, out)

        return forward

    def fp16_noise(
        self, prepared: Prepared, inputs: tuple[torch.Tensor, ...], post: Any, projections: int = 8, seed: int = 0,
    ) -> dict[str, float]:
        """First-order FP16 noise per compute op (see :meth:`htx.api.ComputeUnit.fp16_noise`): one forward
        pass that also runs each compute op in low precision, then ``projections`` backward passes."""
        torch.backends.mha.set_fastpath_enabled(False)
        mode = _NoiseMode(self.low_dtype)
        with tf32_allowed(self.device, self.params.tf32), torch.enable_grad():
            with mode:
                outs = prepared.inner(*(t.to(self.device) for t in inputs))
            y = post(tuple(outs))
            out = project_noise(y, mode.outputs, mode.errors, self.device, projections, seed)
        out.update({n: math.inf for n in mode.overflow})
        for op in prepared.op_list:  # ops with no path to the output (or mutated in place): no estimate, 0
            if op.compute:
                out.setdefault(op.name, 0.0)
        return out

    def record(self, prepared: Prepared, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        stats: dict[str, OpStats] = {}
        with tf32_allowed(self.device, self.params.tf32), torch.no_grad(), \
                _OpMode(fp16=frozenset(assignment.fp16), low_dtype=self.low_dtype, stats=stats):
            prepared.inner(*(t.to(self.device) for t in inputs))
        return stats
