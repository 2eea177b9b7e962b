"""The workspace: what every trial of a run shares, computed once (model, fixtures, FP32 references).

Each value lives in a typed cache; a value that failed to load keeps its failure, so every trial that
needs it reports the same reason. Workers of a parallel run take the driver's fixtures and references
(:class:`SharedData`) instead of loading them again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from htx.applicability import surgery_problems
from htx.errors import HtxError, ModelError
from htx.failures import describe_failure
from htx.fixtures import Fixture, load_fixture
from htx.models import LoadedModel, load_model
from htx.reference import get_reference

if TYPE_CHECKING:
    from htx.config import ExperimentConfig
    from htx.plugins import Registry

T = TypeVar("T")


@dataclass
class Cached(Generic[T]):
    """A value computed once and shared by trials, or the failure that every such trial reports."""

    value: T | None = None
    error: BaseException | None = None
    reason: str | None = None

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SharedData:
    """Fixtures and FP32 references the driver holds, shipped to workers (Ray's object store).

    ``fixtures``/``references`` map a fixture index to its value; ``fixture_errors``/``reference_errors``
    to the reason it could not be loaded.
    """

    fixtures: dict[int, Fixture] = field(default_factory=dict)
    fixture_errors: dict[int, str] = field(default_factory=dict)
    references: dict[int, np.ndarray] = field(default_factory=dict)
    reference_errors: dict[int, str] = field(default_factory=dict)


class Workspace:
    """The model, fixtures and references of one config, each loaded once.

    ``check_surgeries=False`` skips checking the config's surgeries against the loaded model (a caller
    that validated them already, e.g. on the model skeleton).
    """

    def __init__(self, cfg: ExperimentConfig, registry: Registry, say: Callable[[str], None] | None = None,
                 check_surgeries: bool = True, announce_setup: bool = True) -> None:
        self.cfg = cfg
        self.registry = registry
        self.say = say or (lambda msg: None)
        #: False in a worker: the driver said already which model and fixtures it loaded and which references
        #: it computed; the worker says only what it computes itself
        self.announce_setup = announce_setup
        self.cache_dir = Path(cfg.store.cache_dir)
        self.check_surgeries = check_surgeries
        self._model: LoadedModel | None = None
        self.fixtures: dict[int, Cached[Fixture]] = {}
        self.references: dict[int, Cached[np.ndarray]] = {}
        self.shared: SharedData | None = None
        #: FP32 references this process computed (not read from the disk cache or the driver).
        self.references_computed = 0

    # the model ---------------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loaded, and the surgeries checked against it, on first use)."""
        if self._model is None:
            if self.announce_setup:
                self.say("loading model ...")
            loaded = load_model(self.cfg.model)
            if self.announce_setup:
                self.say(f"model: {loaded.source} (hash {loaded.hash})")
            if self.check_surgeries:
                problems = surgery_problems(self.registry, self.cfg.surgery, loaded.model)
                if problems:
                    raise ModelError(
                        f"{len(problems)} surgery(ies) do not apply to {loaded.source}:\n"
                        + "\n".join(f"  - {p}" for p in problems)
                        + "\nRemove them from `surgery:` or use a model they apply to."
                    )
            self._model = loaded
        return self._model

    # fixtures and references --------------------------------------------------------------------------

    def load(self, only: Iterable[int] | None = None) -> None:
        """Load the model, the fixtures and their FP32 references (cached on disk by content hash).

        ``only``: the fixture indices to load (a worker loads those of its chunk); ``None`` loads all.
        Values already present, or given by :attr:`shared`, are not loaded again.
        """
        loaded = self.model
        wanted = range(len(self.cfg.fixtures)) if only is None else sorted(set(only))
        if self.shared is not None:
            self._adopt(wanted)
        for i in wanted:
            if i in self.fixtures:
                continue
            entry = self.cfg.fixtures[i]
            cached: Cached[Fixture] = Cached()
            try:
                cached.value = load_fixture(entry, loaded.samplerate, loaded.model.audio_channels, loaded.segment_length)
                for note in cached.value.notes if self.announce_setup else ():
                    self.say(f"fixture {entry.label}: {note}")
            except Exception as exc:
                cached.error, cached.reason = exc, f"fixture {entry.label}: {describe_failure(exc)}"
                self.say(f"fixture {entry.label} unusable: {describe_failure(exc)}")
            self.fixtures[i] = cached
        sep = self.cfg.separation
        for i in wanted:
            fx = self.fixtures[i]
            if i in self.references or not fx.ok:
                continue
            ref: Cached[np.ndarray] = Cached()
            try:
                t0 = time.perf_counter()
                ref.value, hit = get_reference(loaded, fx.get(), sep.overlap, sep.transition_power, self.cache_dir)
                self.references_computed += not hit
                if not hit:
                    self.say(f"reference {fx.get().name}: computed in {time.perf_counter() - t0:.1f} s")
                elif self.announce_setup:
                    self.say(f"reference {fx.get().name}: read from the cache ({self.cache_dir})")
            except Exception as exc:
                ref.error, ref.reason = exc, f"reference for {fx.get().name}: {describe_failure(exc)}"
            self.references[i] = ref

    def _adopt(self, wanted: Iterable[int]) -> None:
        shared = self.shared
        assert shared is not None
        for i in wanted:
            if i not in self.fixtures:
                if i in shared.fixtures:
                    fixture = shared.fixtures[i]
                    # Object-store arrays are read-only; trials hand them to torch, which wants writable memory.
                    self.fixtures[i] = Cached(value=dataclasses.replace(fixture, mix=fixture.mix.copy()))
                elif i in shared.fixture_errors:
                    reason = shared.fixture_errors[i]
                    self.fixtures[i] = Cached(error=HtxError(reason), reason=reason)
            if i not in self.references:
                if i in shared.references:
                    self.references[i] = Cached(value=shared.references[i].copy())
                elif i in shared.reference_errors:
                    reason = shared.reference_errors[i]
                    self.references[i] = Cached(error=HtxError(reason), reason=reason)

    def fixture_and_reference(self, index: int) -> tuple[Fixture, np.ndarray]:
        """Fixture ``index`` and its reference, or the :class:`HtxError` saying why it is unusable."""
        fx = self.fixtures[index]
        if not fx.ok:
            raise HtxError(fx.reason or str(fx.error))
        ref = self.references[index]
        if not ref.ok:
            raise HtxError(ref.reason or str(ref.error))
        return fx.get(), ref.get()

    def usable(self) -> Iterator[tuple[int, Fixture, np.ndarray]]:
        """Every loaded fixture that has a reference, with it."""
        for i, fx in self.fixtures.items():
            ref = self.references.get(i)
            if fx.ok and ref is not None and ref.ok:
                yield i, fx.get(), ref.get()

    def shared_data(self) -> SharedData:
        """The fixtures and references held here, for workers."""
        return SharedData(
            fixtures={i: c.get() for i, c in self.fixtures.items() if c.ok},
            fixture_errors={i: c.reason or str(c.error) for i, c in self.fixtures.items() if not c.ok},
            references={i: c.get() for i, c in self.references.items() if c.ok},
            reference_errors={i: c.reason or str(c.error) for i, c in self.references.items() if not c.ok},
        )
