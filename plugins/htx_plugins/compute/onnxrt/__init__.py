"""The ``onnx`` compute unit: ONNX Runtime with real FP16 kernels (optional extra ``htx[onnx]``)."""

from htx_plugins.compute.onnxrt.unit import OnnxUnit

__all__ = ["OnnxUnit"]
