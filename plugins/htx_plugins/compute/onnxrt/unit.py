"""``onnx`` compute unit: the inner model exported to ONNX and run by ONNX Runtime, FP16 where assigned.

``prepare`` exports the surgery's inner model with ``torch.onnx.export`` (TorchScript exporter, opset 17) once per
(model, surgery, input shape), cached under ``<cache_dir>/onnx/<content hash>/`` and exported again when the
cached file is missing or does not load. ``ops`` lists the ONNX nodes with MIL types and portable keys
(:mod:`htx_plugins.compute.onnxrt.graph`); ``compile`` builds the typed FP16/FP32 graph of an assignment and runs
it in an ``InferenceSession`` on the configured execution providers: real FP16 kernels where the provider has
them (where the CPU provider has none, ONNX Runtime casts around the node itself, and values still cross it in
FP16). ``export`` writes that graph as a deployable ``.onnx``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from htx.api import (
    Assignment,
    ComputeUnit,
    HtxError,
    InnerModel,
    OpInfo,
    OpStats,
    Params,
    Placement,
    UnavailableError,
    content_key,
    is_compute,
    model_prefix,
    module_stack,
    number_ops,
    placement_runs,
)
from htx_plugins.compute.onnxrt.graph import (
    FLOAT,
    FLOAT16,
    SKIPPED,
    fp16_invalid,
    mil_type,
    scope_module,
    static_values,
    typed_graph,
    value_types,
)

OPSET = 17
CACHE_VERSION = "1"
INSTALL = "pip install 'htx[onnx]'"
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider",
             "TensorrtExecutionProvider")
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxParams(Params):
    providers: list[Literal["CPUExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
                            "DmlExecutionProvider", "TensorrtExecutionProvider"]] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], min_length=1,
        description="ONNX Runtime execution providers, in order of preference")
    threads: int | None = Field(None, ge=1, description="intra-op threads (default: ONNX Runtime's own)")
    optimization: Literal["disable", "basic", "extended", "all"] = Field("all", description="graph optimization level")


@dataclass
class OnnxPrepared:
    path: Path
    model: Any  # onnx.ModelProto (FP32, as exported)
    types: dict[str, int]
    invalid: frozenset[str]  # nodes that stay FP32 (a constant beyond FP16's range)
    op_list: list[OpInfo]
    input_names: list[str]
    output_names: list[str]
    export_s: float
    cached: bool
    sessions: OrderedDict[frozenset[str], Any] = field(default_factory=OrderedDict)
    #: what the last export wrote: FP16 compute ops, compute ops, casts
    export_report: dict[str, int] = field(default_factory=dict)


class OnnxUnit(ComputeUnit):
    """Runs the inner model in ONNX Runtime, with FP16 nodes where the assignment says (real FP16 kernels).

    Example config::

        compute:
          - onnx                                              # CPU provider
          - onnx: {providers: [CUDAExecutionProvider], threads: 4}
    """

    name = "onnx"
    Params = OnnxParams
    disk_cached_prepare = True
    MAX_SESSIONS = 4

    def available(self) -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnx and onnxruntime are not installed ({exc.name}): {INSTALL}"
        have = ort.get_available_providers()
        missing = [p for p in self.params.providers if p not in have]
        if missing:
            return False, f"execution provider {missing[0]} is not in this onnxruntime {ort.__version__} (it has {', '.join(have)})"
        return True, ""

    @property
    def runtime(self) -> str:
        return "onnxruntime:" + self.params.providers[0].removesuffix("ExecutionProvider").lower()

    def resources(self) -> dict[str, float]:
        return {"GPU": 1.0} if self.params.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else {}

    # prepare ------------------------------------------------------------------------------------------

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> OnnxPrepared:
        ok, why = self.available()
        if not ok:
            raise UnavailableError(why)
        import onnx

        inputs = tuple(t.detach().cpu().float() for t in example_inputs)
        inner_cpu = inner.to("cpu").eval()
        key = content_key(inner_cpu, inputs, CACHE_VERSION, f"opset{OPSET}", onnx.__version__)
        entry = (Path(cache_dir) if cache_dir is not None else Path(_tmp_root())) / "onnx" / key
        path = entry / "model.onnx"
        t0 = time.perf_counter()
        model, cached = _load(path), True
        if model is None:
            cached = False
            model = _export(inner_cpu, inputs, entry)
        export_s = time.perf_counter() - t0
        types = value_types(model)
        known = {name for name, _ in inner_cpu.named_modules()}
        prefix = model_prefix(inner_cpu)
        nodes = [n for n in model.graph.node if n.op_type not in SKIPPED]
        paths = [scope_module(n.name, known, prefix) for n in nodes]
        static = static_values(model)
        # a MatMul by a weight is a linear layer (torch's linear on a 3-D input exports as MatMul + Add)
        kinds = ["linear" if n.op_type == "MatMul" and n.input[1] in static else mil_type(n.op_type) for n in nodes]
        ordinals = number_ops(paths, kinds)
        invalid = fp16_invalid(model, _static_arrays(model, types, inputs, static))
        ops = [OpInfo(n.name, t, is_compute(t) and not t.startswith("onnx.") and _floating(n, types),
                      {"onnx": n.op_type, "fp16_valid": n.name not in invalid}, p, k)
               for n, t, p, k in zip(nodes, kinds, paths, ordinals)]
        return OnnxPrepared(path, model, types, invalid, ops, [i.name for i in model.graph.input], [o.name for o in model.graph.output],
                            export_s, cached)

    def ops(self, prepared: OnnxPrepared) -> list[OpInfo]:
        return list(prepared.op_list)

    # run ----------------------------------------------------------------------------------------------

    def typed(self, prepared: OnnxPrepared, assignment: Assignment) -> Any:
        compute = frozenset(op.name for op in prepared.op_list if op.compute)
        return typed_graph(prepared.model, prepared.types, frozenset(assignment.fp16) & compute, compute, prepared.invalid)

    def session(self, prepared: OnnxPrepared, assignment: Assignment) -> Any:
        key = frozenset(assignment.fp16)
        if key in prepared.sessions:
            prepared.sessions.move_to_end(key)
            return prepared.sessions[key]
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.params.optimization])
        if self.params.threads:
            opts.intra_op_num_threads = self.params.threads
        opts.log_severity_level = 3
        model = self.typed(prepared, assignment).model
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=list(self.params.providers))
        except Exception as exc:
            raise HtxError(f"onnxruntime refused the typed graph ({len(assignment.fp16)} FP16 ops): {str(exc).splitlines()[0]}") from exc
        prepared.sessions[key] = sess
        while len(prepared.sessions) > self.MAX_SESSIONS:
            prepared.sessions.popitem(last=False)
        return sess

    def compile(self, prepared: OnnxPrepared, assignment: Assignment) -> Any:
        sess = self.session(prepared, assignment)
        names = prepared.input_names

        def forward(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            device = args[0].device
            feed = {n: a.detach().to("cpu", torch.float32).numpy() for n, a in zip(names, args)}
            outs = sess.run(None, feed)
            return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs)

        return forward

    def record(self, prepared: OnnxPrepared, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        """Per-node statistics of one pass of the typed graph: every node output is made a graph output for it."""
        import onnx
        import onnxruntime as ort

        model = self.typed(prepared, assignment).model
        listed = {op.name for op in prepared.op_list}
        nodes = [n for n in model.graph.node if n.name in listed]
        produced = {o for n in nodes for o in n.output if o}
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=v) for v in sorted(produced - known))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node as typed
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        feed = {n: t.detach().cpu().float().numpy() for n, t in zip(prepared.input_names, inputs)}
        values = dict(zip(names, sess.run(names, feed)))
        for init in model.graph.initializer:
            values.setdefault(init.name, onnx.numpy_helper.to_array(init))
        stats: dict[str, OpStats] = {}
        for n in nodes:
            st = OpStats()
            for o in n.output:
                arr = values.get(o)
                if arr is not None and arr.dtype.kind == "f":
                    st.nan += int(np.isnan(arr).sum())
                    st.inf += int(np.isinf(arr).sum())
                    fin = np.abs(arr[np.isfinite(arr)])
                    st.max_abs = max(st.max_abs, float(fin.max()) if fin.size else 0.0)
            for v in n.input:
                arr = values.get(v)
                if arr is not None and arr.dtype.kind == "f" and arr.size:
                    st.inputs_finite = st.inputs_finite and bool(np.isfinite(arr).all())
                    fin = np.abs(arr[np.isfinite(arr)])
                    st.max_abs_input = max(st.max_abs_input, float(fin.max()) if fin.size else 0.0)
            ins = [values.get(v) for v in n.input[:1]]
            outs = [values.get(o) for o in n.output[:1]]
            if n.op_type.startswith("Reduce") or n.op_type in ("Softmax", "LayerNormalization", "InstanceNormalization"):
                if ins and outs and ins[0] is not None and outs[0] is not None and outs[0].size:
                    st.reduction_size = max(1, ins[0].size // outs[0].size) if not n.op_type.endswith("Normalization") \
                        else int(np.prod(ins[0].shape[2:]))
            stats[n.name] = st
        return stats

    def placement(self, prepared: OnnxPrepared, assignment: Assignment) -> Placement:
        """Precision segments of the compute ops in execution order and the casts the typed graph holds; from the
        session's own optimized graph (the runtime's plan), how many compute nodes run FP16 kernels: a provider
        without an FP16 kernel for a node runs it, and runs of such nodes, in FP32 between casts (ONNX Runtime's
        InsertCastTransformer), so its values are rounded to FP16 only where the plan still has FP16."""
        runs = placement_runs(prepared.op_list, Assignment(frozenset(assignment.fp16) - prepared.invalid))
        typed = self.typed(prepared, assignment)
        plan = _fp16_kernels(typed.model, list(self.params.providers), self.params.optimization) if assignment.fp16 else None
        return Placement(partitions=runs["partitions"], casts=typed.casts, source="typed graph", device_plan=plan)

    def export(self, prepared: OnnxPrepared, assignment: Assignment, path: Path) -> Path:
        """Write the typed graph of ``assignment`` (FP16 nodes where assigned, FP32 inputs and outputs) to ``path``."""
        import onnx

        typed = self.typed(prepared, assignment)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(typed.model, str(path))
        prepared.export_report = {"fp16_ops": typed.fp16_nodes, "compute_ops": sum(op.compute for op in prepared.op_list),
                                  "casts": typed.casts}
        return path


def _static_arrays(model: Any, types: dict[str, int], inputs: tuple[torch.Tensor, ...], static: set[str]) -> dict[str, Any]:
    """The float values fixed by the input shapes, computed once by ONNX Runtime in FP32 on ``inputs``."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == FLOAT}
    wanted = [v for v in static if v not in arrays and types.get(v) == FLOAT]
    if wanted:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(v, FLOAT, None) for v in wanted)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(model.graph.input, inputs)}
        arrays.update(zip(wanted, sess.run(wanted, feed)))
    return arrays


def _fp16_kernels(model: Any, providers: list[str], optimization: str) -> dict[str, int]:
    """Compute nodes of the session's optimized graph that produce FP16 (FP16 kernels) and that produce FP32."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[optimization])
        opts.optimized_model_filepath = str(Path(d) / "plan.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        plan = onnx.load(opts.optimized_model_filepath)
    elem = value_types(plan)
    counts = {"fp16_kernel_nodes": 0, "fp32_kernel_nodes": 0}
    for n in plan.graph.node:
        if is_compute(mil_type(n.op_type)) and not mil_type(n.op_type).startswith("onnx."):
            kinds = {elem.get(o) for o in n.output if o}
            counts["fp16_kernel_nodes" if FLOAT16 in kinds else "fp32_kernel_nodes"] += 1
    return counts


def _floating(node: Any, types: dict[str, int]) -> bool:
    """Whether a node computes on floats (an integer or boolean op has no FP16 to choose)."""
    return any(types.get(v, 1) in (1, 10) for v in [*node.input, *node.output] if v)


def _load(path: Path) -> Any:
    """The cached model at ``path``, or None when it is missing or does not load and check (then exported again)."""
    if not path.exists():
        return None
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        return model
    except Exception:
        return None


def _export(inner: InnerModel, inputs: tuple[torch.Tensor, ...], entry: Path) -> Any:
    """Export with the TorchScript exporter; a failure names the module the exporter was in."""
    import onnx

    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention fast path has no ONNX export
    tmp = entry.with_name(entry.name + f".tmp{time.time_ns()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with module_stack(inner) as stack, torch.no_grad():
            try:
                torch.onnx.export(inner, inputs, str(tmp / "model.onnx"), dynamo=False, opset_version=OPSET, do_constant_folding=False,
                                  input_names=[f"input_{i}" for i in range(len(inputs))])
            except Exception as exc:
                where = stack[-1] if stack else _module_of_operator(inner, inputs, str(exc))
                raise HtxError(f"ONNX export failed in module {where!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        model = onnx.load(str(tmp / "model.onnx"))
        (tmp / "meta.json").write_text(json.dumps({"opset": OPSET, "onnx": onnx.__version__, "torch": torch.__version__,
                                                   "created_at": time.time()}))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
        return model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _module_of_operator(inner: InnerModel, inputs: tuple[torch.Tensor, ...], message: str) -> str:
    """The module whose forward calls the operator an exporter error names (``'aten::linalg_svd'``), found in a
    TorchScript trace's scopes; the inner model's own forward when it cannot tell."""
    import re

    found = re.search(r"operator '(aten::\w+)'", message)
    if found:
        try:
            with torch.no_grad():
                graph = torch.jit.trace(inner, inputs, check_trace=False).inlined_graph
            for node in graph.nodes():
                if node.kind() == found.group(1):
                    scope = node.scopeName().split("/")[-1].removeprefix("__module.")
                    if scope:
                        return scope
        except Exception:
            pass
    return "the inner model's own forward"


_TMP: list[str] = []


def _tmp_root() -> str:
    if not _TMP:
        import atexit
        import tempfile

        _TMP.append(tempfile.mkdtemp(prefix="htx-onnx-"))
        atexit.register(shutil.rmtree, _TMP[0], ignore_errors=True)
    return _TMP[0]


__all__ = ["OnnxParams", "OnnxPrepared", "OnnxUnit"]
