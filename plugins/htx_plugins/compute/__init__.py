"""Built-in compute units."""

from htx.hookspecs import hookimpl
from htx_plugins.compute.coreml import CoreMLUnit
from htx_plugins.compute.torch_unit import TorchUnit


@hookimpl
def htx_register_compute_units(register):
    register(TorchUnit)
    register(CoreMLUnit)
