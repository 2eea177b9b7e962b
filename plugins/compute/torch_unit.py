"""``torch`` compute unit: the inner model in PyTorch with the precision assignment applied per aten op.

Every aten op call of one forward pass is an op instance named ``<mil_type>_<k>`` (the k-th op of that
MIL type in execution order, so names are stable for a given model, surgery and input shape). An op
assigned low precision gets its floating inputs cast to ``low_dtype`` and its floating outputs cast back
to FP32, the same semantics as Core ML's ``FP16ComputePrecision``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from htx.contracts import Assignment, ComputeUnit, InnerModel, OpInfo, OpStats, Params
from htx.opmap import is_compute, mil_type_for_aten


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class _OpMode(TorchDispatchMode):
    """Names each aten op call, optionally lists it, casts it, and records output statistics."""

    def __init__(
        self,
        fp16: frozenset[str] = frozenset(),
        low_dtype: torch.dtype = torch.float16,
        listing: list[OpInfo] | None = None,
        stats: dict[str, OpStats] | None = None,
        weight_cache: dict[Any, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.fp16 = fp16
        self.low = low_dtype
        self.listing = listing
        self.stats = stats
        self.counter: Counter[str] = Counter()
        self.weight_cache = weight_cache if weight_cache is not None else {}

    def _to_low(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
            if t.requires_grad:  # a parameter: cast once per compiled assignment
                key = (t.data_ptr(), tuple(t.shape), t._version)
                cached = self.weight_cache.get(key)
                if cached is None:
                    cached = t.detach().to(self.low)
                    self.weight_cache[key] = cached
                return cached
            return t.to(self.low)
        return t

    def _to_high(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dtype == self.low:
            return t.to(torch.float32)
        return t

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        mil = mil_type_for_aten(func, args)
        if mil is None:
            return func(*args, **kwargs)
        name = f"{mil}_{self.counter[mil]}"
        self.counter[mil] += 1
        if self.listing is not None:
            self.listing.append(OpInfo(name, mil, is_compute(mil), {"aten": str(func)}))
        if name in self.fp16:
            low_args = tree_map(self._to_low, args)
            low_kwargs = tree_map(self._to_low, kwargs)
            out = func(*low_args, **low_kwargs)
            if func._schema.is_mutable and args and isinstance(args[0], torch.Tensor):
                # In-place op: write the low-precision result back into the FP32 tensor it mutates.
                args[0].copy_(out if isinstance(out, torch.Tensor) else out[0])
                out = args[0]
            else:
                out = tree_map(self._to_high, out)
        else:
            out = func(*args, **kwargs)
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
            if ins and outs and outs[0].numel():
                st.reduction_size = max(1, ins[0].numel() // max(1, outs[0].numel()))
        self.stats[name] = st


def _tensors(x: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, torch.Tensor) else None, x)
    return found


class TorchParams(Params):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    low_dtype: Literal["fp16", "bf16"] = "fp16"


class Prepared:
    def __init__(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], ops: list[OpInfo]) -> None:
        self.inner = inner
        self.example_inputs = example_inputs
        self.op_list = ops


class TorchUnit(ComputeUnit):
    """PyTorch eager execution with per-op FP16/BF16 casting.

    Example config::

        compute:
          - torch                                   # device auto: cuda, then mps, then cpu
          - torch: {device: cpu, low_dtype: bf16}
    """

    name = "torch"
    Params = TorchParams

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params.device)

    @property
    def low_dtype(self) -> torch.dtype:
        return torch.float16 if self.params.low_dtype == "fp16" else torch.bfloat16

    @property
    def runtime(self) -> str:
        return f"torch:{self.device.type}"

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
        return True, ""

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Any = None) -> Prepared:
        # The fused MHA fast path would hide attention's ops; Core ML conversion disables it too.
        torch.backends.mha.set_fastpath_enabled(False)
        inner = inner.to(self.device).eval()
        inputs = tuple(t.to(self.device) for t in example_inputs)
        listing: list[OpInfo] = []
        with torch.no_grad(), _OpMode(listing=listing):
            inner(*inputs)
        return Prepared(inner, inputs, listing)

    def ops(self, prepared: Prepared) -> list[OpInfo]:
        return list(prepared.op_list)

    def compile(self, prepared: Prepared, assignment: Assignment) -> Any:
        inner = prepared.inner
        fp16 = frozenset(assignment.fp16)
        if not fp16:
            def forward_fp32(*inputs: torch.Tensor) -> Any:
                with torch.no_grad():
                    return inner(*inputs)
            return forward_fp32
        weight_cache: dict[Any, torch.Tensor] = {}
        low = self.low_dtype

        def forward(*inputs: torch.Tensor) -> Any:
            with torch.no_grad(), _OpMode(fp16=fp16, low_dtype=low, weight_cache=weight_cache):
                return inner(*inputs)

        return forward

    def record(self, prepared: Prepared, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        stats: dict[str, OpStats] = {}
        with torch.no_grad(), _OpMode(fp16=frozenset(assignment.fp16), low_dtype=self.low_dtype, stats=stats):
            prepared.inner(*(t.to(self.device) for t in inputs))
        return stats
