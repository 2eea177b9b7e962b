"""A MIL program as plain data: ops in program order, their inputs, outputs and FP16-pass facts.

:func:`read_program` walks a coremltools ``Program`` once. Besides names, types, shapes and constant
values it records, for every op, what coremltools' ``FP16ComputePrecision`` pass would do to it: whether
the op is eligible at all (``fp16_valid``: not a cast or control flow, no FP32 constant above 65504) and
which of its parameters the pass casts (``cast_params``: e.g. not the ``epsilon`` of ``rsqrt`` on iOS17+).
The emulator applies a run-time assignment with exactly these facts, so that it matches the typed
program ``ct.convert(..., compute_precision=FP16ComputePrecision(op_selector=...))`` produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

FLOAT_DTYPES = ("fp16", "fp32")


@dataclass(frozen=True)
class VarInfo:
    """A value of the program: its name, dtype (``fp32``, ``fp16``, ``int32``, ``bool``, ...) and static shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Ref:
    """An op input produced by another op or by a program input."""

    var: VarInfo


@dataclass(frozen=True)
class Const:
    """An op input that is a constant of the program (weights, axes, modes, scalars)."""

    var: VarInfo
    value: Any  # numpy array, numpy scalar or str


Arg = Union[Ref, Const]


@dataclass
class Node:
    """One non-const op of the program."""

    name: str
    type: str
    inputs: dict[str, Arg | list[Arg]]
    outputs: list[VarInfo]
    fp16_valid: bool = True
    cast_params: frozenset[str] = frozenset()

    def arg(self, param: str) -> Arg | list[Arg] | None:
        return self.inputs.get(param)


@dataclass
class Graph:
    """The main function of a MIL program: inputs, ops in program order, output names."""

    inputs: list[VarInfo]
    nodes: list[Node]
    outputs: list[str]
    opset: str = ""
    consts: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


_DTYPES: dict[Any, str] = {}


def _dtype(var: Any) -> str:
    # Var.dtype walks coremltools' type system on every call; the answer only depends on the var's type.
    key = var.sym_type
    try:
        return _DTYPES[key]
    except (KeyError, TypeError):
        pass
    from coremltools.converters.mil.mil import types

    try:
        name = types.builtin_to_string(var.dtype)
    except Exception:
        name = str(var.dtype)
    try:
        _DTYPES[key] = name
    except TypeError:
        pass
    return name


def _shape(var: Any) -> tuple[int, ...]:
    shape = getattr(var, "shape", None)
    if shape is None:
        return ()
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except (TypeError, ValueError):
            out.append(-1)  # symbolic dimension
    return tuple(out)


def _info(var: Any) -> VarInfo:
    return VarInfo(var.name, _dtype(var), _shape(var))


def _arg(var: Any) -> Arg:
    if var.op is not None and var.op.op_type == "const":
        return Const(_info(var), var.val)
    return Ref(_info(var))


def read_program(prog: Any, function: str = "main") -> Graph:
    """Read ``prog`` (a coremltools MIL ``Program``) into a :class:`Graph`.

    Raises ``ValueError`` for ops with nested blocks (``cond``, ``while_loop``), which HTDemucs programs
    never contain and the emulator does not execute.
    """
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    func = prog.functions[function]
    fp16_pass = FP16ComputePrecision(op_selector=lambda op: True)
    unsupported = FP16ComputePrecision._UNSUPPORTED_FP16_OPS
    nodes: list[Node] = []
    n_const = 0
    # The pass's decisions depend on the opset of the enclosing function (e.g. iOS17+ keeps epsilon FP32).
    with func:
        for op in func.operations:
            if op.op_type == "const":
                n_const += 1
                continue
            if op.blocks:
                raise ValueError(f"op {op.name!r} of type {op.op_type!r} has nested blocks (control flow); the emulator runs straight-line programs only")
            inputs: dict[str, Arg | list[Arg]] = {}
            for param, v in op.inputs.items():
                inputs[param] = [_arg(x) for x in v] if isinstance(v, (list, tuple)) else _arg(v)
            # FP16ComputePrecision.is_valid_op, with its FP32-constant range check done without temporaries.
            valid = op.op_type not in unsupported and not _fp16_overflow(inputs)
            cast = frozenset(p for p in op.inputs if fp16_pass.should_cast_parameter(op, p)) if valid else frozenset()
            nodes.append(Node(op.name, op.op_type, inputs, [_info(o) for o in op.outputs], valid, cast))
    opset = str(getattr(func, "opset_version", "") or "")
    return Graph([_info(v) for v in func.inputs.values()], nodes, [v.name for v in func.outputs], opset, n_const)


def _fp16_overflow(inputs: dict[str, Arg | list[Arg]]) -> bool:
    """``FP16ComputePrecision.fp16_overflow``: some FP32 constant input has a finite value beyond +-65504.

    Values of magnitude >= 1e38 count as infinities (they may become FP16 inf, e.g. attention masks).
    """
    for arg in inputs.values():
        for a in arg if isinstance(arg, list) else [arg]:
            if not isinstance(a, Const) or a.var.dtype != "fp32":
                continue
            v = np.asarray(a.value)
            if v.size == 0 or (float(v.max()) <= 65504 and float(v.min()) >= -65504):
                continue  # the common case, decided without temporaries
            mag = np.abs(v.astype(np.float32, copy=False))
            if float(np.max(mag, where=mag < 1e38, initial=0.0)) > 65504:
                return True
    return False


def fp16_const(value: Any) -> np.ndarray:
    """A FP32 constant as the FP16 pass stores it: rounded to FP16, with tiny values kept non-zero.

    Mirrors ``CastTypeQuantization._check_underflow_to_zero``: for constants of fewer than 400 elements,
    a non-zero value that rounds to zero becomes the smallest FP16 subnormal of its sign.
    """
    orig = np.asarray(value, dtype=np.float32)
    new = orig.astype(np.float16)
    if orig.size < 400:
        tiny16 = np.nextafter(np.float16(0), np.float16(1))
        zero16 = np.isclose(new, 0, atol=tiny16, rtol=np.finfo(np.float16).eps)
        if zero16.any():
            tiny32 = np.nextafter(np.float32(0), np.float32(1))
            nonzero32 = ~np.isclose(orig, 0, atol=tiny32, rtol=np.finfo(np.float32).eps)
            fix = zero16 & nonzero32
            if fix.any():
                new = np.where(fix, np.where(orig > 0, tiny16, -tiny16), new).astype(np.float16)
    return new
