"""The ONNX graph side of the ``onnx`` unit: op listing with portable keys, and the typed FP16 graph of an assignment.

**Op listing.** Every ONNX node but ``Constant`` / ``Identity`` (no arithmetic, no op of the model) is an op
instance named by its node name. Its type is the Core ML MIL name of its ONNX op type (:data:`ONNX_TO_MIL`), so a
policy means the same thing as on the other units; layout types are not compute ops. Its module path comes from
the node's scope (``/tencoder.0/dconv/layers.1/layers.1.4/InstanceNormalization``: a ``ModuleList`` child's scope
repeats its parent's, so ``layers.1`` then ``layers.1.4`` is the module ``layers.1.4``), made relative to the
demucs model and checked against the inner model's modules.

**Typed graph.** An op assigned low precision runs in FP16, unless a constant it reads is beyond FP16's range
(above 65504: it would be inf), which keeps it FP32 as coremltools' ``FP16ComputePrecision`` does
(:func:`fp16_invalid`): its float inputs are cast to FP16 (an initializer gets
an FP16 copy instead), its float outputs are FP16, and an FP32 consumer or graph output gets a cast back, one cast
per value and dtype. A layout op runs in FP16 when every float input already has an FP16 version (so reshapes
inside an FP16 region add no casts), else in FP32. Graph inputs and outputs stay FP32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ONNX op type -> MIL type. Types missing here keep ``onnx.<OpType>`` (never a compute op a policy names).
ONNX_TO_MIL: dict[str, str] = {
    "Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "linear", "MatMul": "matmul",
    "Softmax": "softmax", "LogSoftmax": "softmax", "LayerNormalization": "layer_norm",
    "InstanceNormalization": "instance_norm", "GroupNormalization": "group_norm", "BatchNormalization": "batch_norm",
    "ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod", "ReduceL2": "l2_norm",
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "real_div", "Pow": "pow", "Sqrt": "sqrt", "Exp": "exp",
    "Log": "log", "Abs": "abs", "Neg": "mul", "Reciprocal": "inverse", "Erf": "erf", "Gelu": "gelu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu", "Sin": "sin", "Cos": "cos", "Clip": "clip",
    "Where": "select", "Max": "maximum", "Min": "minimum", "Mod": "mod", "CumSum": "cumsum",
    "Equal": "equal", "Less": "less", "Greater": "greater", "Not": "logical_not", "And": "logical_and",
    "Reshape": "reshape", "Flatten": "reshape", "Transpose": "transpose", "Unsqueeze": "expand_dims",
    "Squeeze": "squeeze", "Slice": "slice_by_index", "Concat": "concat", "Split": "split", "Pad": "pad",
    "Gather": "gather", "GatherElements": "gather", "ScatterND": "scatter", "Cast": "cast", "Tile": "tile",
    "Expand": "broadcast_to", "Shape": "shape", "ConstantOfShape": "fill", "Range": "range_1d", "Size": "shape",
}
#: Node types that are no op instance of the model.
SKIPPED = frozenset({"Constant", "Identity"})
#: Ops whose output type is fixed by an attribute or that make tensors from shapes: always run as exported.
AS_EXPORTED = frozenset({"Cast", "ConstantOfShape", "Range", "EyeLike", "RandomNormalLike"})
#: Ops that read only their input's shape: they take whichever version of it exists (no cast).
SHAPE_ONLY = frozenset({"Shape", "Size"})

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16


def mil_type(op_type: str) -> str:
    return ONNX_TO_MIL.get(op_type, f"onnx.{op_type}")


def scope_module(node_name: str, known: set[str], prefix: str) -> str:
    """The portable module path of a node from its scoped name (see the module docstring); ``""`` when the
    scope names no module of the inner model (the model's own forward)."""
    segments = node_name.strip("/").split("/")[:-1]
    path, last = "", ""
    for seg in segments:
        path = path + seg[len(last):] if last and seg.startswith(last + ".") else (f"{path}.{seg}" if path else seg)
        last = seg
    while path:  # scopes are relative to the inner model or to the demucs model inside it
        if prefix and prefix + path in known:
            return path
        if path in known:
            return path[len(prefix):] if prefix and (path + ".").startswith(prefix) else path
        path = path.rpartition(".")[0]  # a scope the exporter invented: the nearest real module
    return ""


@dataclass
class Typed:
    """The FP16/FP32 graph of one assignment."""

    model: Any  # onnx.ModelProto
    casts: int
    fp16_nodes: int


def value_types(model: Any) -> dict[str, int]:
    """Element type of every value of ``model`` (inputs, initializers, constants, inferred intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
        elif node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            types[node.output[0]] = to
    return types


FP16_MAX = 65504.0


def static_values(model: Any) -> set[str]:
    """Values fixed once the input shapes are (initializers, constants, shapes and what is computed from them
    alone, such as the element count a normalization divides by)."""
    static = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        ins = [v for v in node.input if v]
        if node.op_type in ("Constant", "Shape", "Size") or (ins and all(v in static for v in ins)):
            static.update(o for o in node.output if o)
    return static


def fp16_invalid(model: Any, values: dict[str, Any]) -> frozenset[str]:
    """Nodes that read a static float value (:func:`static_values`; ``values`` holds their arrays) beyond FP16's
    range: they stay FP32, as coremltools keeps an op with an FP32 constant above 65504."""
    big = {name for name, arr in values.items() if arr.dtype.kind == "f" and _beyond(arr)}
    return frozenset(n.name for n in model.graph.node if any(v in big for v in n.input))


def _beyond(arr: Any) -> bool:
    import numpy as np

    finite = arr[np.isfinite(arr)]
    return bool(finite.size) and float(np.abs(finite).max()) > FP16_MAX


def typed_graph(model: Any, types: dict[str, int], fp16_nodes: frozenset[str], compute: frozenset[str],
                invalid: frozenset[str] = frozenset()) -> Typed:
    """``model`` with the compute nodes named in ``fp16_nodes`` running in FP16, except ``invalid`` ones
    (:func:`fp16_invalid`), as the module docstring says."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_inits: list[Any] = []
    nodes: list[Any] = []
    avail: dict[str, dict[int, str]] = {i.name: {i.type.tensor_type.elem_type: i.name} for i in g.input}
    for name, init in inits.items():
        avail[name] = {init.data_type: name}
    casts = 0
    n16 = 0

    def version(value: str, want: int) -> str:
        nonlocal casts
        have = avail.setdefault(value, {types.get(value, FLOAT): value})
        if want in have:
            return have[want]
        name = value if want == FLOAT else f"{value}__h"
        if value in inits and want == FLOAT16:
            arr = numpy_helper.to_array(inits[value]).astype("float16")
            new_inits.append(numpy_helper.from_array(arr, name))
        else:
            src = next(iter(have.values()))
            nodes.append(helper.make_node("Cast", [src], [name], to=want, name=f"{value}__cast{want}"))
            casts += 1
        have[want] = name
        return name

    def is_float(value: str) -> bool:
        return types.get(value, FLOAT) in (FLOAT, FLOAT16)

    for node in g.node:
        float_in = [v for v in node.input if v and is_float(v)]
        if node.op_type in AS_EXPORTED or node.op_type in SKIPPED:
            low = False
        elif node.name in compute:
            low = node.name in fp16_nodes and node.name not in invalid
        else:  # layout: FP16 where every float input is FP16 already
            low = bool(float_in) and all(FLOAT16 in avail.get(v, {}) for v in float_in)
        want = FLOAT16 if low else FLOAT
        inputs = [version(v, want) if v and is_float(v) and node.op_type not in SHAPE_ONLY
                  else (next(iter(avail[v].values())) if v in avail else v) for v in node.input]
        outputs = []
        for o in node.output:
            if low and is_float(o):
                outputs.append(f"{o}__h")
                avail[o] = {FLOAT16: f"{o}__h"}
            else:
                outputs.append(o)
                avail[o] = {types.get(o, FLOAT): o}
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        del copy.output[:]
        copy.output.extend(outputs)
        nodes.append(copy)
        n16 += low and node.name in compute
    for out in g.output:
        name = version(out.name, FLOAT)
        if name != out.name:  # pragma: no cover - the FP32 version of a value always has its own name
            nodes.append(helper.make_node("Identity", [name], [out.name]))
    graph = helper.make_graph(nodes, g.name, list(g.input), list(g.output), [*g.initializer, *new_inits])
    typed = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="htx")
    typed.ir_version = model.ir_version
    return Typed(typed, casts, n16)


__all__ = ["AS_EXPORTED", "FP16_MAX", "ONNX_TO_MIL", "fp16_invalid", "SHAPE_ONLY", "SKIPPED", "Typed", "mil_type", "scope_module", "typed_graph", "value_types"]
