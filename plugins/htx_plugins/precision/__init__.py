"""Built-in precision policies, and ``htx bench search``."""

from htx.api import hookimpl
from htx_plugins.precision import bench_cmd
from htx_plugins.precision.bisect import Bisect
from htx_plugins.precision.magnitude import Magnitude
from htx_plugins.precision.sensitivity import Sensitivity
from htx_plugins.precision.static import FP32, AllFP16, CuratedFP32, ModulesFP32


@hookimpl
def htx_register_precision_policies(register):
    register(FP32)
    register(AllFP16)
    register(CuratedFP32)
    register(ModulesFP32)
    register(Bisect)
    register(Magnitude)
    register(Sensitivity)


@hookimpl
def htx_register_commands(bench):
    bench.command("search")(bench_cmd.bench_search)
