"""``coreml`` compute unit: real coremltools conversion, executed natively on macOS or by the emulator."""

from __future__ import annotations

import math
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from htx.api import (
    Assignment,
    ComputeUnit,
    InnerModel,
    NativeOrEmulated,
    OpInfo,
    OpStats,
    Params,
    Placement,
    UnavailableError,
    is_compute,
    model_prefix,
    number_ops,
    placement_runs,
    portable_module,
    project_noise,
)
from htx_plugins.compute.coreml import native
from htx_plugins.compute.coreml.convert import (
    CachedConversion,
    Signature,
    cached_graph,
    cached_modules,
    convert_cached,
    load_program,
    quiet,
    typed_convert,
)
from htx_plugins.compute.coreml.emulator import Emulator, Plan
from htx_plugins.compute.coreml.graph import Graph, Ref, read_program


class CoreMLParams(Params):
    units: Literal["CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"] = "CPU_AND_NE"
    runtime: Literal["auto", "native", "emulated"] = "auto"
    target: Literal["iOS15", "iOS16", "iOS17", "iOS18"] = "iOS18"
    accumulate: Literal["fp32", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class CoreMLPrepared:
    """One converted program: the cache entry, the parsed graph, its op list and (emulated) the emulator."""

    conversion: CachedConversion
    graph: Graph
    op_list: list[OpInfo]
    emulator: Emulator | None
    load_s: float
    plans: OrderedDict[frozenset[str], Plan] = field(default_factory=OrderedDict)
    #: what the last :meth:`CoreMLUnit.export` wrote (FP16 share, casts)
    export_report: dict[str, Any] = field(default_factory=dict)

    @property
    def sig(self) -> Signature:
        return self.conversion.sig


class CoreMLUnit(NativeOrEmulated, ComputeUnit):
    """Core ML ``mlprogram`` conversion with per-op FP16/FP32 (coremltools ``FP16ComputePrecision`` semantics).

    ``prepare`` converts the inner model once to an FP32 mlprogram (cached on disk by content hash under
    ``<cache_dir>/coreml/``). On macOS with the Core ML runtime (``runtime: native``, or ``auto``) each
    assignment is converted with coremltools' ``op_selector`` and predicted on ``units``; elsewhere the
    typed-execution emulator runs the program op by op in torch, every value in its assigned dtype.
    ``runtime: native`` where there is no Core ML runtime makes the trials ``unavailable``; it never
    silently emulates.

    Example config::

        compute:
          - coreml                                          # CPU_AND_NE, native on a Mac, emulated elsewhere
          - coreml: {units: ALL, runtime: native}           # unavailable off macOS
          - coreml: {runtime: emulated, accumulate: fp16, device: cuda, target: iOS17}
    """

    name = "coreml"
    Params = CoreMLParams

    #: assignments kept planned per prepared program (a bisection revisits few)
    MAX_PLANS = 8
    #: ``prepare`` converts once per key into ``<cache_dir>/coreml/``: parallel executors convert in the driver.
    disk_cached_prepare = True

    def resources(self) -> dict[str, float]:
        # Native Core ML needs a Mac worker (custom Ray resource `macos`); the emulator on CUDA needs a GPU.
        if self.params.runtime == "native":
            return {"macos": 1.0}
        if self.params.device == "cuda":
            return {"GPU": 1.0}
        return {}

    def native_available(self) -> tuple[bool, str]:
        return native.runtime_available()

    @property
    def runtime(self) -> str:
        if self.emulated:
            return "coreml:emulated"
        return f"coreml:native[{self.params.units}]"

    @property
    def device(self) -> torch.device:
        if not self.emulated:
            return torch.device("cpu")
        if self.params.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.params.device)

    def available(self) -> tuple[bool, str]:
        why = self.native_unavailable()
        if why:
            return False, why
        if self.emulated and self.params.device == "cuda" and not torch.cuda.is_available():
            return False, "device cuda: CUDA is not available (no GPU or a CPU-only torch build)"
        return True, ""

    # ------------------------------------------------------------------------------------------------

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> CoreMLPrepared:
        ok, why = self.available()
        if not ok:
            raise UnavailableError(f"compute {self.label}: {why}")
        conversion = convert_cached(inner, tuple(example_inputs), self.params.target, cache_dir)
        t0 = time.perf_counter()
        graph, _ = cached_graph(conversion)
        load_s = time.perf_counter() - t0
        prefix = model_prefix(inner)
        modules = cached_modules(conversion)
        paths = [portable_module(modules.get(n.name, ""), prefix) for n in graph.nodes]
        ordinals = number_ops(paths, [n.type for n in graph.nodes])
        ops = [
            OpInfo(n.name, n.type, is_compute(n.type), {"shape": [list(o.shape) for o in n.outputs], "fp16_valid": n.fp16_valid},
                   path, k)
            for n, path, k in zip(graph.nodes, paths, ordinals)
        ]
        emulator = Emulator(graph, self.device, self.params.accumulate) if self.emulated else None
        return CoreMLPrepared(conversion, graph, ops, emulator, load_s)

    def ops(self, prepared: CoreMLPrepared) -> list[OpInfo]:
        return list(prepared.op_list)

    def _plan(self, prepared: CoreMLPrepared, assignment: Assignment) -> Plan:
        key = frozenset(assignment.fp16)
        plan = prepared.plans.get(key)
        if plan is None:
            assert prepared.emulator is not None
            plan = prepared.emulator.plan(key)
            prepared.plans[key] = plan
            while len(prepared.plans) > self.MAX_PLANS:
                prepared.plans.popitem(last=False)
        else:
            prepared.plans.move_to_end(key)
        return plan

    def compile(self, prepared: CoreMLPrepared, assignment: Assignment) -> Any:
        sig = prepared.sig
        if prepared.emulator is None:
            out_dir = prepared.conversion.path.parent
            if not out_dir.exists():  # pragma: no cover - cache entry removed under us
                out_dir = Path(tempfile.mkdtemp(prefix="htx-coreml-"))
            return native.compile_native(prepared.conversion.path, sig, prepared.conversion.target,
                                         frozenset(assignment.fp16), self.params.units, out_dir)
        emulator = prepared.emulator
        plan = self._plan(prepared, assignment)

        def forward(*inputs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
            tensors = [t for i, t in enumerate(inputs) if i not in sig.none_inputs]
            with torch.no_grad():
                outs = iter(emulator.run(plan, tensors))
            return tuple(None if i in sig.none_outputs else next(outs) for i in range(sig.n_outputs))

        return forward

    def fp16_noise(
        self, prepared: CoreMLPrepared, inputs: tuple[torch.Tensor, ...], post: Any, projections: int = 8, seed: int = 0,
    ) -> dict[str, float]:
        """First-order FP16 noise per MIL op, from the emulated program itself (see
        :meth:`htx.api.ComputeUnit.fp16_noise`): one differentiable FP32 pass in which each compute op
        also runs alone in FP16 from the same inputs, with the configured ``accumulate``, then ``projections``
        backward passes. Core ML's own ops are ranked (a decomposed group norm's ``reduce_mean``/``sqrt``
        included), not a torch op's estimate carried by key. The native runtime gives no gradients."""
        emulator = prepared.emulator
        if emulator is None:
            raise NotImplementedError("native Core ML gives no gradients: rank through rank_unit")
        names = frozenset(op.name for op in prepared.op_list if op.compute)
        tensors = [t for i, t in enumerate(inputs) if i not in prepared.sig.none_inputs]
        with torch.enable_grad():
            outs, outputs, errors, overflow = emulator.noise_pass(tensors, names)
            it = iter(outs)
            y = post(tuple(None if i in prepared.sig.none_outputs else next(it) for i in range(prepared.sig.n_outputs)))
            out = project_noise(y, outputs, errors, emulator.device, projections, seed)
        out.update({n: math.inf for n in overflow})
        for n in names:  # ops whose output does not reach the stems (or that stay FP32 whatever): 0
            out.setdefault(n, 0.0)
        return out

    def record(self, prepared: CoreMLPrepared, assignment: Assignment, inputs: tuple[torch.Tensor, ...]) -> dict[str, OpStats]:
        """Per-op statistics of one emulated pass (max |x|, NaN/Inf counts, input magnitude, reduction size)."""
        emulator = prepared.emulator
        if emulator is None:
            # Recording needs every intermediate value, which only the emulator exposes.
            emulator = Emulator(prepared.graph, "cpu", self.params.accumulate)
        plan = self._plan(prepared, assignment) if prepared.emulator is not None else emulator.plan(frozenset(assignment.fp16))
        stats: dict[str, OpStats] = {}
        tensors = [t for i, t in enumerate(inputs) if i not in prepared.sig.none_inputs]
        with torch.no_grad():
            emulator.run(plan, tensors, stats=stats)
        return stats

    def placement(self, prepared: CoreMLPrepared, assignment: Assignment) -> Placement:
        """The placement audit of ``assignment`` on ``CPU_AND_NE``, from the typed program (emulated).

        FP32-typed ops never run on the Neural Engine, so ``off_ne_ops`` are the FP32 compute ops and every
        change of precision along execution order starts a new partition. ``casts`` are the cast ops
        ``FP16ComputePrecision`` inserts: one per value consumed in the other precision (layout ops pass
        their input's precision through). On macOS, :func:`native.device_plan` reads the real compute plan.
        """
        runs = placement_runs(prepared.op_list, assignment)
        casts = count_casts(prepared.graph, assignment)
        source, plan = ("emulated" if self.emulated else "typed program"), None
        if not self.emulated:
            typed = native.typed_package(prepared.conversion.path, prepared.sig, prepared.conversion.target,
                                         frozenset(assignment.fp16), prepared.conversion.path.parent)
            plan = native.device_plan(typed, self.params.units)
            if plan is not None:
                source = "device plan"
        return Placement(runs["partitions"], runs["ne_ops"], runs["off_ne_ops"], casts, source, plan)

    def export(self, prepared: CoreMLPrepared, assignment: Assignment, path: Path) -> Path:
        """Write the ``.mlpackage`` of ``prepared`` typed by ``assignment`` (coremltools' own ``op_selector``).

        The cached FP32 program is read back and converted again with ``FP16ComputePrecision``; the ops
        assigned FP16 become FP16 in the package, every other op stays FP32. ``prepared.export_report`` tells
        what the package holds (see :func:`export_summary`).
        """
        path = Path(path)
        with quiet():
            mlmodel, seen = typed_convert(load_program(prepared.conversion.path), prepared.sig,
                                          prepared.conversion.target, frozenset(assignment.fp16))
            path.parent.mkdir(parents=True, exist_ok=True)
            mlmodel.save(str(path))
        prepared.export_report = export_summary(mlmodel, assignment, seen)
        return path


def export_summary(mlmodel: Any, assignment: Assignment, seen: set[str]) -> dict[str, Any]:
    """What a typed package holds: FP16 and total compute ops, cast ops, and assigned ops the selector missed."""
    typed = read_program(mlmodel._mil_program)
    compute_ops = [n for n in typed.nodes if is_compute(n.type)]  # casts are layout ops
    fp16_ops = [n for n in compute_ops if any(o.dtype == "fp16" for o in n.outputs)]
    return {
        "fp16_ops": len(fp16_ops), "compute_ops": len(compute_ops),
        "casts": sum(n.type == "cast" for n in typed.nodes),
        "unmatched": sorted(set(assignment.fp16) - seen),
    }


def count_casts(graph: Graph, assignment: Assignment) -> int:
    """Casts the typed program needs: distinct (value, precision) pairs where a float value is consumed by
    an op of the other precision. Layout ops run in their input's precision; program inputs are FP32."""
    precision: dict[str, bool] = {v.name: False for v in graph.inputs}  # value -> is FP16
    casts: set[tuple[str, bool]] = set()
    for node in graph.nodes:
        refs = [a for a in _flat(node.inputs.values()) if isinstance(a, Ref) and a.var.dtype in ("fp32", "fp16")]
        if is_compute(node.type):
            low = node.name in assignment.fp16 and node.fp16_valid
            for a in refs:
                if precision.get(a.var.name, False) != low:
                    casts.add((a.var.name, low))
        else:
            low = any(precision.get(a.var.name, False) for a in refs[:1])
        for o in node.outputs:
            precision[o.name] = low
    return len(casts)


def _flat(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return out
