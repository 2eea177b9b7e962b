"""The axes table: the one place that lists the grid's axes.

Each axis is a plugin kind (surgery, precision, stft, compute) with its registration hook and its base
class. The config's fields, the grid's nesting, trial ids, the store's columns, the leaderboard's
columns, ``htx show``, ``htx validate`` and ``htx plugins`` all derive from :data:`AXES`. Adding an axis
means one :class:`Axis` entry (:func:`add_axis`) plus its hookspec.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from htx.interfaces import ComputeUnit, Plugin, PrecisionPolicy, STFTBackend, Surgery


@dataclass(frozen=True)
class Axis:
    """One axis of the grid.

    ``name`` is the config key, the store column and the plugin kind. ``hook`` is the registration hook
    (``htx_register_<kind>``), ``base`` the class registered plugins must subclass, ``default`` the
    plugin name a config that omits the axis gets. ``nesting`` orders the grid's loops (lower is outer:
    trials sharing the outer entries reuse their prepared model). ``scope`` says what an entry decides:
    ``prepare`` (the prepared model: surgery, compute), ``assignment`` (the precision assignment) or
    ``pipeline`` (per trial only: stft). ``hookspecs`` is the module that declares ``hook`` for an axis
    added from outside :mod:`htx.hookspecs`.
    """

    name: str
    hook: str
    base: type[Plugin]
    default: str
    title: str
    nesting: int
    scope: str = "assignment"
    hookspecs: ModuleType | None = None


AXES: list[Axis] = [
    Axis("surgery", "htx_register_surgeries", Surgery, "full-hybrid", "surgery", nesting=0, scope="prepare"),
    Axis("precision", "htx_register_precision_policies", PrecisionPolicy, "fp32", "precision", nesting=2),
    Axis("stft", "htx_register_stft_backends", STFTBackend, "torch", "stft", nesting=3, scope="pipeline"),
    Axis("compute", "htx_register_compute_units", ComputeUnit, "torch", "compute", nesting=1, scope="prepare"),
]


def axis_names() -> tuple[str, ...]:
    """The axis names in display order (trial ids hash the entries in this order)."""
    return tuple(a.name for a in AXES)


def nesting_order() -> list[Axis]:
    """The axes from the outermost grid loop to the innermost."""
    return sorted(AXES, key=lambda a: a.nesting)


@contextmanager
def add_axis(axis: Axis) -> Iterator[Axis]:
    """Add ``axis`` to the table for the duration of the block (tests, notebooks, plugins that bring one)."""
    if any(a.name == axis.name for a in AXES):
        raise ValueError(f"axis {axis.name!r} exists already")
    AXES.append(axis)
    try:
        yield axis
    finally:
        AXES.remove(axis)
