"""``coreml`` compute unit: coremltools conversion, the typed-execution emulator and the native runtime.

Modules: ``convert`` (tracing, conversion, the on-disk cache, op_selector conversions), ``graph`` (a MIL
program as plain data with the FP16 pass's decisions), ``kernels`` (torch implementations of MIL ops),
``emulator`` (plans and runs a program under an assignment, records per-op statistics), ``native``
(the macOS runtime) and ``unit`` (the plugin class).
"""

from htx_plugins.compute.coreml.unit import CoreMLUnit

__all__ = ["CoreMLUnit"]
