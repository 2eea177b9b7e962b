"""Grid expansion: surgery x compute x precision x STFT x fixture, in an order that reuses work."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from htx.config import ExperimentConfig, FixtureEntry, PluginEntry


@dataclass(frozen=True)
class TrialSpec:
    """One combination to run. Serializable (plain data) so executors can ship it to workers."""

    idx: int
    trial_id: str
    surgery: PluginEntry
    precision: PluginEntry
    stft: PluginEntry
    compute: PluginEntry
    fixture_index: int
    fixture: str

    @property
    def combo_key(self) -> tuple[str, str, str]:
        """(surgery, compute, precision): trials sharing it share one prepared model and one assignment."""
        return (self.surgery.key(), self.compute.key(), self.precision.key())


def trial_id(surgery: PluginEntry, precision: PluginEntry, stft: PluginEntry, compute: PluginEntry, fixture_index: int, fixture: FixtureEntry) -> str:
    raw = "|".join([surgery.key(), precision.key(), stft.key(), compute.key(), str(fixture_index), fixture.label, str(fixture.path)])
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def expand_grid(cfg: ExperimentConfig) -> list[TrialSpec]:
    """Every combination of the config's axes and fixtures, surgery-major so caches are reused."""
    specs: list[TrialSpec] = []
    for s in cfg.surgery:
        for c in cfg.compute:
            for p in cfg.precision:
                for b in cfg.stft:
                    for i, fx in enumerate(cfg.fixtures):
                        specs.append(TrialSpec(len(specs), trial_id(s, p, b, c, i, fx), s, p, b, c, i, fx.label))
    return specs
