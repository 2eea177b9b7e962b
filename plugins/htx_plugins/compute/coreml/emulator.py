"""The typed-execution emulator: a MIL program executed op by op in torch, every value in its dtype.

A :class:`Plan` fixes, for one precision assignment, each op's kernel, where each input comes from and
how it is converted, and which values are stored in FP16. The assignment follows coremltools'
``FP16ComputePrecision`` semantics on the FP32 program: an op assigned FP16 that the pass would transform
gets its castable FP32 inputs rounded to FP16 (constants as the pass stores them, tiny values kept
non-zero) and its FP32 outputs stored in FP16 (so values above 65504 become inf, as on device); every
consumer that runs in FP32 widens them back exactly. Ops the pass leaves alone (casts, ops with an FP32
constant above 65504) stay FP32 whatever the assignment says. A typed program (one converted with
FP16 already applied) runs with an empty assignment: its declared dtypes alone decide.

Arithmetic inside an op runs in FP32 and only its output is rounded (``accumulate: fp32``); with
``accumulate: fp16`` the reductions of ops that run in FP16 accumulate in FP16 (see :mod:`.kernels`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from htx.api import OpStats
from htx_plugins.compute.coreml.graph import FLOAT_DTYPES, Const, Graph, Node, Ref, fp16_const
from htx_plugins.compute.coreml.kernels import LAYOUT_KERNELS, TORCH_DTYPES, OpView, UnknownOpError, build
from htx_plugins.compute.torch_unit import tf32_allowed

#: Non-float constant inputs that kernels read as tensors (everything else non-float is an attribute).
TENSOR_PARAMS = frozenset({"indices", "cond", "attn_mask"})
#: Elementwise ops whose FP16 result, computed directly on FP16 tensors, is bit-identical to FP32
#: arithmetic rounded once to FP16 (correctly rounded +, -, *, /, sqrt; exact max, min, abs, relu), so
#: they skip the widen/round passes. tests/test_coreml.py checks the equivalence on this machine.
HALF_NATIVE = frozenset({"add", "sub", "mul", "real_div", "sqrt", "square", "maximum", "minimum", "abs", "relu"})
#: Op types whose statistics report a reduction size (elements combined per output element).
REDUCING = ("reduce_", "softmax", "layer_norm", "instance_norm", "l2_norm", "batch_norm")

Getter = Callable[[list[Any]], Any]


class EmulatorError(RuntimeError):
    """An op produced something other than what the program declares (a kernel bug), or failed."""


@dataclass
class Step:
    node: Node
    run: Callable[[dict[str, Any]], Any]
    args: list[tuple[str, Getter]]
    raw: list[tuple[str, Getter]]  # non-const float inputs as stored, for statistics
    outs: list[int]
    out16: list[bool]
    shapes: list[tuple[int, ...]]
    low: bool
    free: list[int]


@dataclass
class Plan:
    """One assignment, ready to run: steps, slots for values, program inputs and outputs."""

    steps: list[Step]
    n_slots: int
    input_slots: list[int]
    output_slots: list[int]
    fp16: frozenset[str]
    low_ops: frozenset[str] = frozenset()  # ops that actually run in FP16 under this plan
    info: dict[str, Any] = field(default_factory=dict)


def _is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


class Emulator:
    """Executes a :class:`~htx_plugins.compute.coreml.graph.Graph` in torch on ``device``.

    Constants are converted to tensors once per emulator (and once more, FP16-rounded, for the ops an
    assignment puts in FP16), so evaluating many assignments of one program never reconverts anything.
    """

    def __init__(self, graph: Graph, device: torch.device | str = "cpu", accumulate: str = "fp32") -> None:
        if accumulate not in ("fp32", "fp16"):
            raise ValueError(f"accumulate must be fp32 or fp16, got {accumulate!r}")
        self.graph = graph
        self.device = torch.device(device)
        self.accumulate = accumulate
        self._consts: dict[tuple[str, str], torch.Tensor] = {}

    # constants ---------------------------------------------------------------------------------------

    def _const(self, c: Const, form: str) -> torch.Tensor:
        """``c`` as a tensor: ``form`` is ``as_is``, ``f32`` (widened), ``r16`` (FP16-rounded, FP32 storage) or ``h16``."""
        key = (c.var.name, form)
        t = self._consts.get(key)
        if t is None:
            value = c.value
            if form in ("r16", "h16"):
                arr = fp16_const(value)
                t = torch.from_numpy(np.ascontiguousarray(arr))
                t = t.float() if form == "r16" else t
            else:
                arr = np.asarray(value)
                if arr.dtype == np.float64:
                    arr = arr.astype(np.float32)
                if arr.dtype == np.uint16:
                    arr = arr.astype(np.int32)
                t = torch.from_numpy(np.ascontiguousarray(arr))
                if form == "f32" and t.is_floating_point():
                    t = t.float()
            t = t.to(self.device)
            self._consts[key] = t
        return t

    # planning ----------------------------------------------------------------------------------------

    def plan(self, fp16: frozenset[str] | set[str] = frozenset(), isolated: bool = False) -> Plan:
        """Plan the program with the op names in ``fp16`` running in FP16 (FP16ComputePrecision semantics).

        ``isolated``: each op in ``fp16`` is planned as if it alone ran in FP16 (every value stays stored in
        its declared dtype, so its inputs reach it as they would from FP32 producers): the plan
        :meth:`noise_pass` runs each op's FP16 twin from."""
        fp16 = frozenset(fp16)
        g = self.graph
        slot: dict[str, int] = {}
        store: dict[str, str] = {}  # storage dtype of every value
        for v in g.inputs:
            slot[v.name] = len(slot)
            store[v.name] = v.dtype
        acc16_mode = self.accumulate == "fp16"
        steps: list[Step] = []
        low_ops: set[str] = set()
        last_use: dict[int, int] = {}
        for i, node in enumerate(g.nodes):
            low = node.name in fp16 and node.fp16_valid and _castable(node)
            if low:
                low_ops.add(node.name)
            runs16 = low or any(a.var.dtype == "fp16" for a in _flat_args(node))
            # Kernels that take their inputs in the stored dtype: layout ops, and IEEE-exact elementwise ops
            # whose float inputs are all FP16 (their FP16 result equals FP32 arithmetic rounded once).
            layout = (node.type in LAYOUT_KERNELS or node.type == "cast"
                      or (node.type in HALF_NATIVE and runs16 and _all_fp16_inputs(node, low)))
            effective: dict[str, Any] = {}
            args: list[tuple[str, Getter]] = []
            raw: list[tuple[str, Getter]] = []
            for param, arg in node.inputs.items():
                cast = low and param in node.cast_params
                if isinstance(arg, list):
                    getters = [self._getter(a, cast, layout, slot, store, last_use, i) for a in arg]
                    getters = [gt for gt in getters if gt is not None]
                    args.append((param, _list_getter(getters)))
                    for a in arg:
                        if isinstance(a, Ref) and _is_float(a.var.dtype):
                            raw.append((param, _slot_getter(slot[a.var.name])))
                    continue
                if isinstance(arg, Const) and cast and arg.var.dtype == "fp32":
                    effective[param] = fp16_const(arg.value)
                gt = self._getter(arg, cast, layout, slot, store, last_use, i, param)
                if gt is not None:
                    args.append((param, gt))
                if isinstance(arg, Ref) and _is_float(arg.var.dtype):
                    raw.append((param, _slot_getter(slot[arg.var.name])))
            try:
                run = build(OpView(node, low, acc16_mode and runs16, effective, self.device))
            except UnknownOpError:
                raise
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise EmulatorError(f"cannot plan op {node.name!r} ({node.type}): {type(exc).__name__}: {exc}") from exc
            outs, out16, shapes = [], [], []
            for o in node.outputs:
                s = len(slot)
                slot[o.name] = s
                to16 = _is_float(o.dtype) and (o.dtype == "fp16" or low)
                store[o.name] = "fp16" if to16 and not (isolated and o.dtype != "fp16") else o.dtype
                outs.append(s)
                out16.append(to16)
                shapes.append(o.shape)
            steps.append(Step(node, run, args, raw, outs, out16, shapes, low, []))
        output_slots = []
        for name in g.outputs:
            if name not in slot:
                raise EmulatorError(f"program output {name!r} is not produced by any op")
            output_slots.append(slot[name])
        keep = set(output_slots)
        for st in steps:
            for s in st.outs:
                if s not in last_use and s not in keep:
                    st.free.append(s)  # an output nobody reads (e.g. one half of a split)
        for s, i in last_use.items():
            if s not in keep:
                steps[i].free.append(s)
        return Plan(steps, len(slot), [slot[v.name] for v in g.inputs], output_slots, fp16, frozenset(low_ops))

    def _getter(self, arg: Any, cast: bool, layout: bool, slot: dict[str, int], store: dict[str, str],
                last_use: dict[int, int], step: int, param: str = "") -> Getter | None:
        """How a step gets one input: a constant tensor or a slot, converted to the dtype the op sees."""
        var = arg.var
        if isinstance(arg, Const):
            if not _is_float(var.dtype):
                if param in TENSOR_PARAMS or param == "":
                    t = self._const(arg, "as_is")
                    return lambda slots, t=t: t
                return None  # an attribute: kernels read it at plan time
            if cast and var.dtype == "fp32":
                form = "h16" if layout else "r16"
            elif var.dtype == "fp16":
                form = "as_is" if layout else "f32"
            else:
                form = "f32"
            t = self._const(arg, form)
            return lambda slots, t=t: t
        s = slot[var.name]
        last_use[s] = step
        stored = store[var.name]
        if not _is_float(var.dtype):
            return _slot_getter(s)
        want16 = (cast and var.dtype == "fp32") or var.dtype == "fp16"
        if layout:
            if want16 and stored == "fp32":
                return lambda slots, s=s: slots[s].half()
            if not want16 and stored == "fp16":
                return lambda slots, s=s: slots[s].float()
            return _slot_getter(s)
        if want16 and stored == "fp32":
            return lambda slots, s=s: slots[s].half().float()
        if stored == "fp16":
            return lambda slots, s=s: slots[s].float()
        return _slot_getter(s)

    # execution ---------------------------------------------------------------------------------------

    def run(self, plan: Plan, inputs: Sequence[torch.Tensor], stats: dict[str, OpStats] | None = None) -> list[torch.Tensor]:
        """Execute ``plan`` on ``inputs`` (program input order); returns the program outputs as FP32."""
        # FP32 means FP32: cuDNN would otherwise run convolutions in TF32 on Ampere and later GPUs.
        with tf32_allowed(self.device, False):
            return self._run(plan, inputs, stats)

    def _input_slots(self, plan: Plan, inputs: Sequence[torch.Tensor], grad: bool = False) -> list[Any]:
        """The value slots of ``plan`` with the program inputs in place, in their declared dtypes and shapes
        (``grad``: float inputs are fresh autograd leaves)."""
        if len(inputs) != len(plan.input_slots):
            raise EmulatorError(f"the program takes {len(plan.input_slots)} inputs, got {len(inputs)}")
        slots: list[Any] = [None] * plan.n_slots
        for s, t, v in zip(plan.input_slots, inputs, self.graph.inputs, strict=True):
            t = t.to(self.device, TORCH_DTYPES.get(v.dtype, torch.float32))
            if tuple(t.shape) != v.shape:
                raise EmulatorError(f"input {v.name!r} has shape {tuple(t.shape)}, the program was converted for {v.shape}")
            slots[s] = t.detach().requires_grad_(True) if grad and t.is_floating_point() else t
        return slots

    def _run(self, plan: Plan, inputs: Sequence[torch.Tensor], stats: dict[str, OpStats] | None) -> list[torch.Tensor]:
        slots = self._input_slots(plan, inputs)
        for st in plan.steps:
            a = {p: g(slots) for p, g in st.args}
            try:
                out = st.run(a)
            except Exception as exc:
                raise EmulatorError(f"op {st.node.name!r} ({st.node.type}) failed: {type(exc).__name__}: {exc}") from exc
            if not isinstance(out, tuple):
                out = (out,)
            if len(out) != len(st.outs):
                raise EmulatorError(f"op {st.node.name!r} ({st.node.type}) produced {len(out)} outputs, the program declares {len(st.outs)}")
            for s, o, to16, shape in zip(st.outs, out, st.out16, st.shapes, strict=True):
                if to16:
                    o = o.half()
                if tuple(o.shape) != shape and -1 not in shape:
                    raise EmulatorError(
                        f"op {st.node.name!r} ({st.node.type}) produced shape {tuple(o.shape)}, the program declares {shape}"
                    )
                slots[s] = o
            if stats is not None:
                stats[st.node.name] = _stats(st, tuple(slots[s] for s in st.outs), slots)
            for s in st.free:
                slots[s] = None
        return [slots[s].float() if slots[s].is_floating_point() else slots[s] for s in plan.output_slots]

    def noise_pass(
        self, inputs: Sequence[torch.Tensor], names: frozenset[str],
    ) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]], set[str]]:
        """One differentiable FP32 pass that also runs each op in ``names`` in FP16 from the same inputs, as if
        it alone ran in FP16 (castable inputs rounded, FP16 constants, the configured accumulation, output
        stored in FP16). Returns the program outputs, each op's FP32 outputs (in the autograd graph), its local
        errors (FP16 twin minus FP32), and the ops whose FP16 twin overflowed where FP32 was finite."""
        p32, p16 = self.plan(frozenset()), self.plan(names, isolated=True)
        outputs: dict[str, list[torch.Tensor]] = {}
        errors: dict[str, list[torch.Tensor]] = {}
        overflow: set[str] = set()
        with tf32_allowed(self.device, False):
            slots = self._input_slots(p32, inputs, grad=True)
            for st, twin in zip(p32.steps, p16.steps, strict=True):
                out = st.run({p: g(slots) for p, g in st.args})
                out = out if isinstance(out, tuple) else (out,)
                floats = [o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()]
                if twin.low and floats and not any(o.requires_grad for o in floats):
                    # Built from constants alone (positional tables): a leaf, or its error gets no gradient.
                    out = tuple(o.detach().requires_grad_(True) if any(o is f for f in floats) else o for o in out)
                for s, o in zip(st.outs, out, strict=True):
                    slots[s] = o
                if not twin.low:
                    continue
                with torch.no_grad():
                    low = twin.run({p: g(slots) for p, g in twin.args})
                low = low if isinstance(low, tuple) else (low,)
                hi_l, err_l = [], []
                for o, lo, to16 in zip(out, low, twin.out16, strict=True):
                    if not (isinstance(o, torch.Tensor) and o.is_floating_point() and o.shape == lo.shape):
                        continue
                    lo32 = (lo.half() if to16 else lo).float()
                    if not bool(torch.isfinite(lo32).all()) and bool(torch.isfinite(o.detach()).all()):
                        overflow.add(st.node.name)
                        break
                    hi_l.append(o)
                    err_l.append(lo32 - o.detach())
                else:
                    if hi_l:
                        outputs[st.node.name], errors[st.node.name] = hi_l, err_l
        return [slots[s] for s in p32.output_slots], outputs, errors, overflow


def _all_fp16_inputs(node: Node, low: bool) -> bool:
    """Whether every float input of ``node`` reaches it in FP16 (declared so, or cast by the FP16 pass)."""
    for param, arg in node.inputs.items():
        for a in arg if isinstance(arg, list) else [arg]:
            if a.var.dtype == "fp32" and not (low and param in node.cast_params):
                return False
    return True


def _castable(node: Node) -> bool:
    """Whether FP16ComputePrecision would transform ``node``: some castable parameter is an FP32 value."""
    for param in node.cast_params:
        arg = node.inputs[param]
        for a in arg if isinstance(arg, list) else [arg]:
            if a.var.dtype == "fp32":
                return True
    return False


def _flat_args(node: Node) -> list[Any]:
    out: list[Any] = []
    for arg in node.inputs.values():
        out.extend(arg if isinstance(arg, list) else [arg])
    return out


def _slot_getter(s: int) -> Getter:
    return lambda slots: slots[s]


def _list_getter(getters: list[Getter]) -> Getter:
    return lambda slots: [g(slots) for g in getters]


def _stats(st: Step, out: tuple[Any, ...], slots: list[Any]) -> OpStats:
    """Statistics of one op's stored outputs (after rounding to their dtype) and of its non-const inputs."""
    s = OpStats()
    for o in out:
        if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel():
            o = o.float()
            fin = torch.isfinite(o)
            nan = int(torch.isnan(o).sum())
            n_fin = int(fin.sum())
            s.nan += nan
            s.inf += o.numel() - n_fin - nan
            if n_fin:
                m = float(o.abs().max()) if n_fin == o.numel() else float(o[fin].abs().max())
                s.max_abs = max(s.max_abs, m)
    for _, g in st.raw:
        t = g(slots)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.numel():
            continue
        t = t.float()
        fin = torch.isfinite(t)
        all_fin = bool(fin.all())
        if not all_fin:
            s.inputs_finite = False
        if all_fin:
            s.max_abs_input = max(s.max_abs_input, float(t.abs().max()))
        elif bool(fin.any()):
            s.max_abs_input = max(s.max_abs_input, float(t[fin].abs().max()))
    if st.node.type.startswith(REDUCING):
        s.reduction_size = _reduction_size(st)
    return s


def _reduction_size(st: Step) -> int:
    node = st.node
    x = node.inputs.get("x")
    if not isinstance(x, (Ref, Const)):
        return 0
    shape = x.var.shape
    rank = len(shape)
    if node.type == "softmax":
        axis = node.inputs.get("axis")
        ax = int(np.asarray(axis.value)) if isinstance(axis, Const) else -1
        return int(shape[ax % rank]) if rank else 1
    if node.type in ("layer_norm",) or node.type.startswith("reduce_"):
        axes = node.inputs.get("axes")
        if isinstance(axes, Const):
            dims = {int(d) % rank for d in np.asarray(axes.value).reshape(-1)}
        elif node.type.startswith("reduce_arg"):
            axis = node.inputs.get("axis")
            dims = {int(np.asarray(axis.value)) % rank} if isinstance(axis, Const) else {rank - 1}
        else:
            dims = set(range(rank))
        return int(math.prod(shape[d] for d in dims))
    if node.type == "instance_norm":
        return int(math.prod(shape[2:]))
    if node.type == "l2_norm":
        return int(math.prod(shape[-3:]))
    return 0
