"""The native Core ML runtime (macOS only): typed conversion per assignment, ``MLModel.predict`` timing.

Everything that touches the runtime goes through :func:`runtime_available` and :func:`load_mlmodel`,
the boundary that tests replace with a mock. This path is untested on hardware until someone runs
``htx run configs/ane_fp16.yaml`` on a Mac.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htx.api import macos_runtime_available
from htx_plugins.compute.coreml.convert import Signature, coremltools, load_program, quiet, typed_convert


def runtime_available() -> tuple[bool, str]:
    """``(True, "")`` where coremltools can run predictions, else ``(False, why)``."""

    def probe() -> None:
        from coremltools import libcoremlpython  # noqa: F401

    return macos_runtime_available("Core ML", "coremltools", probe, "install the macOS wheel of coremltools")


def load_mlmodel(path: Path, units: str) -> Any:
    """The runtime boundary: an ``MLModel`` loaded for prediction on ``units``."""
    ct = coremltools()
    return ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))


def assignment_tag(fp16: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fp16)).encode()).hexdigest()[:16]


def typed_package(base: Path, sig: Signature, target: str, fp16: frozenset[str], out_dir: Path) -> Path:
    """The typed ``.mlpackage`` for ``fp16`` (converted from a fresh copy of the FP32 program once, then cached)."""
    path = Path(out_dir) / f"typed-{assignment_tag(fp16)}.mlpackage"
    if not path.exists():
        mlmodel, _ = typed_convert(load_program(base), sig, target, fp16)
        tmp = path.with_name(f"{path.stem}.tmp{time.time_ns()}.mlpackage")  # coremltools insists on the suffix
        with quiet():
            mlmodel.save(str(tmp))
        tmp.rename(path)
    return path


@dataclass
class NativeForward:
    """Callable with the inner model's inputs, predicting with the Core ML runtime."""

    model: Any
    sig: Signature

    def __call__(self, *inputs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        tensors = [t for i, t in enumerate(inputs) if i not in self.sig.none_inputs]
        feed = {name: t.detach().to("cpu", torch.float32).contiguous().numpy() for name, t in zip(self.sig.input_names, tensors, strict=True)}
        result = self.model.predict(feed)
        outs = iter(torch.from_numpy(np.ascontiguousarray(np.asarray(result[n], dtype=np.float32))) for n in self.sig.output_names)
        return tuple(None if i in self.sig.none_outputs else next(outs) for i in range(self.sig.n_outputs))


def compile_native(base: Path, sig: Signature, target: str, fp16: frozenset[str], units: str, out_dir: Path) -> NativeForward:
    """Convert ``fp16`` with coremltools' op_selector, load it on ``units`` and warm it up once."""
    path = typed_package(base, sig, target, fp16, out_dir)
    forward = NativeForward(load_mlmodel(path, units), sig)
    zeros = [torch.zeros(s) for s in sig.input_shapes]
    it = iter(zeros)
    forward(*[None if i in sig.none_inputs else next(it) for i in range(sig.n_inputs)])  # first predict compiles for the device
    return forward


#: ``MLComputePlan`` device class names -> what the placement audit calls them.
DEVICES = {"MLNeuralEngineComputeDevice": "ne", "MLGPUComputeDevice": "gpu", "MLCPUComputeDevice": "cpu"}


def device_plan(package: Path, units: str) -> dict[str, int] | None:
    """The real compute plan of a typed package on ``units`` (macOS 14.4+, coremltools' ``MLComputePlan``):
    ops per preferred device and the device partitions in program order; ``None`` where there is none.

    Labelled "device plan" wherever it is shown. Unit-tested with the runtime mocked; untested on hardware.
    """
    if not runtime_available()[0]:
        return None
    ct = coremltools()
    compute_plan = getattr(getattr(ct.models, "compute_plan", None), "MLComputePlan", None)
    if compute_plan is None:
        return None
    mlmodel = load_mlmodel(package, units)
    plan = compute_plan.load_from_path(mlmodel.get_compiled_model_path(), compute_units=getattr(ct.ComputeUnit, units))
    counts = {"ne_ops": 0, "gpu_ops": 0, "cpu_ops": 0}
    partitions, last = 0, None
    for op in plan.model_structure.program.functions["main"].block.operations:
        if getattr(op, "operator_name", "") == "const":
            continue
        usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
        device = DEVICES.get(type(getattr(usage, "preferred_compute_device", None)).__name__, "cpu")
        counts[f"{device}_ops"] += 1
        if device != last:
            partitions, last = partitions + 1, device
    return {**counts, "partitions": partitions}
