"""Former home of the plugin interfaces, kept so plugins written against it still import: use :mod:`htx.api`."""

from htx.api import (  # noqa: F401 - re-exported
    Assignment,
    ComputeUnit,
    FirstOrder,
    Forward,
    InnerModel,
    OpInfo,
    OpStats,
    Params,
    Plugin,
    PrecisionPolicy,
    SearchContext,
    SearchPolicy,
    SearchResult,
    StaticPolicy,
    STFTBackend,
    Surgery,
    cac_to_spec,
    demucs_ispec,
    demucs_spec,
    spec_shape,
    spec_to_cac,
)

__all__ = [
    "Assignment", "ComputeUnit", "FirstOrder", "Forward", "InnerModel", "OpInfo", "OpStats", "Params", "Plugin",
    "PrecisionPolicy", "STFTBackend", "SearchContext", "SearchPolicy", "SearchResult", "StaticPolicy", "Surgery",
    "cac_to_spec", "demucs_ispec", "demucs_spec", "spec_shape", "spec_to_cac",
]
