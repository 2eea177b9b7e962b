"""Grid expansion: every combination of the axes' entries and the fixtures, in an order that reuses work.

The axes and their nesting come from :data:`htx.axes.AXES`: surgery, then compute, precision and stft, then
fixtures innermost, so trials that share a prepared model and a precision assignment run one after another.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

from htx.axes import axis_names, nesting_order
from htx.config import ExperimentConfig, PluginEntry
from htx.fixtures import FixtureEntry


@dataclass(frozen=True)
class TrialSpec:
    """One combination to run. Plain data (picklable) so executors can ship it to workers.

    ``axes`` names the axes and ``entries`` holds their plugin entries in the same order; each axis is also
    an attribute (``spec.surgery``, ``spec.precision``, ...).
    """

    idx: int
    trial_id: str
    axes: tuple[str, ...]
    entries: tuple[PluginEntry, ...]
    fixture_index: int
    fixture: str

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("axes", "entries"):
            raise AttributeError(name)
        try:
            return self.entries[self.axes.index(name)]
        except ValueError:
            raise AttributeError(f"TrialSpec has no axis or field {name!r}") from None

    def entry(self, axis: str) -> PluginEntry:
        return self.entries[self.axes.index(axis)]

    def keys(self) -> dict[str, str]:
        """``{axis: entry key}``, what the store and the leaderboard show."""
        return {a: e.key() for a, e in zip(self.axes, self.entries)}

    @property
    def prepare_key(self) -> tuple[str, ...]:
        """The entries that decide the prepared model (surgery, compute)."""
        return tuple(self.entry(a.name).key() for a in nesting_order() if a.scope == "prepare" and a.name in self.axes)

    @property
    def combo_key(self) -> tuple[str, ...]:
        """Trials sharing it share one prepared model and one precision assignment: every axis but the
        per-trial ones (stft), outermost first ``(surgery, compute, precision)``."""
        return tuple(self.entry(a.name).key() for a in nesting_order() if a.scope != "pipeline" and a.name in self.axes)


def trial_id(entries: dict[str, PluginEntry], fixture_index: int, fixture: FixtureEntry) -> str:
    """A stable id: a hash of every axis entry (in :data:`AXES` order), the fixture index, label and path."""
    raw = "|".join([*(entries[a].key() for a in axis_names()), str(fixture_index), fixture.label, str(fixture.path)])
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def make_spec(cfg_entries: dict[str, PluginEntry], idx: int, fixture_index: int, fixture: FixtureEntry) -> TrialSpec:
    names = axis_names()
    return TrialSpec(idx, trial_id(cfg_entries, fixture_index, fixture), names,
                     tuple(cfg_entries[a] for a in names), fixture_index, fixture.label)


def expand_grid(cfg: ExperimentConfig) -> list[TrialSpec]:
    """Every combination of the config's axes and fixtures, outermost axis first, fixtures innermost."""
    order = nesting_order()
    specs: list[TrialSpec] = []
    for combo in itertools.product(*(cfg.entries(a.name) for a in order)):
        entries = {a.name: e for a, e in zip(order, combo)}
        for i, fx in enumerate(cfg.fixtures):
            specs.append(make_spec(entries, len(specs), i, fx))
    return specs
