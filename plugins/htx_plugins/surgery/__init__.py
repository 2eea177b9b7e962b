"""Built-in model-surgery plugins, and ``htx bench surgery``."""

from htx.api import hookimpl
from htx_plugins.surgery import bench as bench_module
from htx_plugins.surgery.decomposed_attention import DecomposedAttentionSurgery
from htx_plugins.surgery.external_norm import ExternalNorm
from htx_plugins.surgery.full_hybrid import FullHybrid
from htx_plugins.surgery.safe_norm import SafeNorm
from htx_plugins.surgery.time_only import TimeOnly


@hookimpl
def htx_register_surgeries(register):
    register(FullHybrid)
    register(ExternalNorm)
    register(DecomposedAttentionSurgery)
    register(SafeNorm)
    register(TimeOnly)


@hookimpl
def htx_register_commands(bench):
    bench.command("surgery")(bench_module.command)
