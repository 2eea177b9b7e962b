"""Built-in model-surgery plugins."""

from htx.hookspecs import hookimpl
from htx_plugins.surgery.full_hybrid import FullHybrid


@hookimpl
def htx_register_surgeries(register):
    register(FullHybrid)
