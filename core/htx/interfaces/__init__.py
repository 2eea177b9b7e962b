"""The plugin interfaces, one module per kind (as hatch's ``interface.py``): what a plugin subclasses.

Plugins import them from :mod:`htx.api`. Every kind's base class carries a complete small plugin in its
docstring, and what a plugin must implement is an ``@abstractmethod``.
"""

from htx.interfaces.base import Params, Plugin
from htx.interfaces.compute import ComputeUnit, Forward
from htx.interfaces.precision import PrecisionPolicy, SearchPolicy, StaticPolicy
from htx.interfaces.stft import STFTBackend
from htx.interfaces.surgery import InnerModel, Surgery

__all__ = [
    "ComputeUnit", "Forward", "InnerModel", "Params", "Plugin", "PrecisionPolicy", "STFTBackend", "SearchPolicy",
    "StaticPolicy", "Surgery",
]
