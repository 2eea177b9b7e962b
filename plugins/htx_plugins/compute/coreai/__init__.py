"""The ``coreai`` compute unit: Apple Core AI ``.aimodel`` export (optional extra ``htx[coreai]``, Python >= 3.11)."""

from htx_plugins.compute.coreai.unit import CoreAIUnit

__all__ = ["CoreAIUnit"]
