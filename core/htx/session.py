"""A session: the combinations of one config, built from the same parts a trial uses.

Commands and benchmarks (built-in or a plugin's) use it instead of assembling a workspace and a trial builder::

    from htx.api import Session, parse_config

    session = Session(parse_config(data, "my bench"))
    spec = session.spec(precision="all-fp16")          # the config's first entries, one replaced
    ev = session.evaluate(spec, session.assignment(spec).assignment)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from htx.axes import axis_names
from htx.builder import AssignmentInfo, Prepared, TrialBuilder
from htx.config import ExperimentConfig, PluginEntry
from htx.errors import ConfigError, format_validation_error
from htx.grid import TrialSpec, expand_grid, make_spec
from htx.interfaces import SearchPolicy
from htx.plugins import Registry, load_registry
from htx.results import Evaluation
from htx.search import SearchContext
from htx.search_session import SearchSession
from htx.types import Assignment, OpStats
from htx.workspace import Workspace


class Session:
    """The parts of a config's trials: plugin instances, the model, fixtures and FP32 references, prepared
    models, assignments (a search runs once per combination), pipelines and search sessions."""

    def __init__(self, cfg: ExperimentConfig, registry: Registry | None = None, say: Callable[[str], None] | None = None,
                 run_id: str | None = None, check_surgeries: bool = True, workspace: Workspace | None = None) -> None:
        self.registry = registry if registry is not None else load_registry()
        self.workspace = workspace or Workspace(cfg, self.registry, say, check_surgeries=check_surgeries)
        self.builder = TrialBuilder(self.workspace, self.registry, run_id)

    @property
    def cfg(self) -> ExperimentConfig:
        return self.workspace.cfg

    def specs(self) -> list[TrialSpec]:
        """Every trial of the config's grid."""
        return expand_grid(self.cfg)

    def spec(self, fixture_index: int = 0, **entries: Any) -> TrialSpec:
        """One combination: the config's first entry of each axis, with ``entries`` (an axis name to a plugin
        entry: a name, ``{name: {options}}`` or a :class:`PluginEntry`) in their place."""
        unknown = set(entries) - set(axis_names())
        if unknown:
            raise ConfigError([f"unknown axis {sorted(unknown)[0]!r}; axes: {', '.join(axis_names())}"])
        chosen = {a: self.cfg.entries(a)[0] for a in axis_names()}
        for axis, e in entries.items():
            try:
                entry = e if isinstance(e, PluginEntry) else PluginEntry.model_validate(e)
            except ValidationError as exc:
                raise ConfigError([f"{axis}: {p}" for p in format_validation_error(exc)]) from None
            cls = self.registry.get(axis, entry.name)  # unknown: "Did you mean ...?"
            try:
                cls.Params(**entry.params)
            except ValidationError as exc:
                raise ConfigError([f"{axis}.{entry.name}.{p}" for p in format_validation_error(exc, cls.Params)]) from None
            chosen[axis] = entry
        if not 0 <= fixture_index < len(self.cfg.fixtures):
            raise ConfigError([f"fixture index {fixture_index} out of range: the config has {len(self.cfg.fixtures)}"])
        return make_spec(chosen, 0, fixture_index, self.cfg.fixtures[fixture_index])

    def load(self) -> None:
        """Load every fixture and its FP32 reference now (a search or an evaluation needs them all)."""
        self.workspace.load()

    def is_search(self, spec: TrialSpec) -> bool:
        return issubclass(self.registry.get("precision", spec.precision.name), SearchPolicy)

    def prepared(self, spec: TrialSpec) -> Prepared:
        return self.builder.prepared(spec)

    def assignment(self, spec: TrialSpec) -> AssignmentInfo:
        """The combination's assignment (a search policy searches, once)."""
        if self.is_search(spec):
            self.load()
        return self.builder.assignment(spec)

    def search(self, spec: TrialSpec) -> SearchSession:
        """The combination's search session: evaluate, record, first-order noise, logs."""
        self.load()
        return self.builder.session(spec)

    def context(self, spec: TrialSpec) -> SearchContext:
        """A fresh :class:`SearchContext` over the combination (to run a search policy by hand)."""
        return self.search(spec).context()

    def evaluate(self, spec: TrialSpec, assignment: Assignment) -> Evaluation:
        """``assignment`` on every fixture through ``spec``'s pipeline, worst case."""
        return Evaluation(self.search(spec).evaluate(assignment))

    def evaluate_forward(self, spec: TrialSpec, forward: Any, timed: bool = False) -> Evaluation:
        """Any callable with the unit's compiled signature (another tool's model of ``spec``'s inner model) through
        ``spec``'s pipeline on every fixture, worst case; ``timed``: latency measured as a trial does."""
        return Evaluation(self.search(spec).evaluate_forward(forward, timed))

    def model_inputs(self, spec: TrialSpec, fixture_index: int = 0) -> tuple[Any, ...]:
        """The inner model's inputs for the first batch of a fixture (what a compiled forward takes)."""
        self.load()
        b = self.builder
        prep = b.prepared(spec)
        pipe = b.pipeline(prep, b.stft(spec.stft, prep.surgery), None)
        args, _ = pipe.model_inputs(b.segmenting.first_batch(self.workspace.fixtures[fixture_index].get().mix))
        return tuple(args)

    def record(self, spec: TrialSpec, assignment: Assignment, fixture_index: int | None = None, offset: int = 0) -> dict[str, OpStats]:
        """Per-op statistics of one pass under ``assignment``."""
        return self.builder.session(spec).record(assignment, fixture_index, offset)


__all__ = ["Session"]
