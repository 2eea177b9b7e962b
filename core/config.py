"""The experiment config: one strict pydantic model loaded from YAML.

Each grid axis (``surgery``, ``precision``, ``stft``, ``compute``) is a list of plugin entries written as a
bare name (``all-fp16``) or a one-key mapping (``{curated-fp32: {ops: [softmax]}}``); each plugin's options
are validated by that plugin's own ``Params`` model. :func:`load_config` validates everything, plugin
names included, without building a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from htx.errors import ConfigError

AXES = ("surgery", "precision", "stft", "compute")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginEntry(Strict):
    """One plugin on one axis: its registered name and its raw options."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and set(value) - {"name", "params"}:
            if len(value) != 1:
                raise ValueError(
                    f"a plugin entry is a name or a one-key mapping {{name: {{options}}}}, got keys {sorted(value)}"
                )
            (name, params), = value.items()
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise ValueError(f"options of {name!r} must be a mapping, got {type(params).__name__}")
            return {"name": name, "params": params}
        return value

    def key(self) -> str:
        """A canonical string for this entry (name plus sorted options), used in trial keys."""
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={self.params[k]!r}" for k in sorted(self.params))
        return f"{self.name}[{inner}]"


class ModelConfig(Strict):
    """Which model: ``demo``, ``random`` (HTDemucs kwargs + seed), ``path`` or ``pretrained``."""

    kind: Literal["demo", "random", "path", "pretrained"]
    random: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    pretrained: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value == "demo":
                return {"kind": "demo"}
            if value == "random":
                return {"kind": "random"}
            raise ValueError(
                f"unknown model {value!r}: use `demo`, `random: {{HTDemucs kwargs, seed}}`, "
                "`path: file.th|file.safetensors` or `pretrained: htdemucs|htdemucs_ft|htdemucs_6s`"
            )
        if isinstance(value, dict) and "kind" not in value:
            if len(value) != 1:
                raise ValueError(f"model must have exactly one of demo/random/path/pretrained, got {sorted(value)}")
            (kind, arg), = value.items()
            if kind == "random":
                return {"kind": "random", "random": arg or {}}
            if kind in ("path", "pretrained"):
                return {"kind": kind, kind: arg}
            if kind == "demo":
                return {"kind": "demo"}
            raise ValueError(f"unknown model kind {kind!r}: use demo, random, path or pretrained")
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "path":
            if not self.path:
                raise ValueError("model.path needs a file name")
            if Path(self.path).suffix not in (".th", ".safetensors"):
                raise ValueError(f"model.path {self.path!r}: expected a demucs checkpoint ending in .th or .safetensors")
        if self.kind == "pretrained" and self.pretrained not in ("htdemucs", "htdemucs_ft", "htdemucs_6s"):
            raise ValueError(f"model.pretrained {self.pretrained!r}: use htdemucs, htdemucs_ft or htdemucs_6s")
        if self.kind == "random":
            from htx.models import check_random_kwargs

            check_random_kwargs(self.random)
        return self

    def key(self) -> str:
        if self.kind == "random":
            return "random:" + ",".join(f"{k}={self.random[k]!r}" for k in sorted(self.random))
        if self.kind == "path":
            return f"path:{self.path}"
        if self.kind == "pretrained":
            return f"pretrained:{self.pretrained}"
        return "demo"


class FixtureEntry(Strict):
    """A built-in or shipped fixture by name (with options), or an audio file by path."""

    name: str | None = None
    path: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            from htx.fixtures import looks_like_path

            return {"path": value} if looks_like_path(value) else {"name": value}
        if isinstance(value, dict) and set(value) - {"name", "path", "params"}:
            if len(value) != 1:
                raise ValueError(f"a fixture is a name, a path or a one-key mapping {{name: {{options}}}}, got {sorted(value)}")
            (name, params), = value.items()
            return {"name": name, "params": params or {}}
        return value

    @model_validator(mode="after")
    def _check(self) -> FixtureEntry:
        if (self.name is None) == (self.path is None):
            raise ValueError("a fixture needs exactly one of `name` or `path`")
        return self

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.name or Path(self.path).stem
        if not self.params:
            return self.name or "?"
        inner = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        return f"{self.name}[{inner}]"


class Targets(Strict):
    snr_db: float = 60.0
    rtol: float = 1e-3
    atol: float = 1e-4


class Latency(Strict):
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)


class Store(Strict):
    path: str = "experiments/htx.sqlite"
    cache_dir: str = "experiments/cache"
    artifacts_dir: str = "experiments/runs"


class Separation(Strict):
    """How long audio is cut into model segments (as demucs's ``apply_model``)."""

    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    transition_power: float = Field(1.0, ge=1.0)
    batch_size: int = Field(1, ge=1)


class Executor(Strict):
    kind: Literal["serial"] = "serial"

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"kind": value}
        return value


class ExperimentConfig(Strict):
    """The whole experiment. See ``configs/quickstart.yaml`` for a commented example."""

    name: str
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(kind="demo"))
    fixtures: list[FixtureEntry] = Field(min_length=1)
    surgery: list[PluginEntry] = Field(default_factory=lambda: [PluginEntry(name="full-hybrid")], min_length=1)
    precision: list[PluginEntry] = Field(default_factory=lambda: [PluginEntry(name="fp32")], min_length=1)
    stft: list[PluginEntry] = Field(default_factory=lambda: [PluginEntry(name="torch")], min_length=1)
    compute: list[PluginEntry] = Field(default_factory=lambda: [PluginEntry(name="torch")], min_length=1)
    targets: Targets = Field(default_factory=Targets)
    latency: Latency = Field(default_factory=Latency)
    store: Store = Field(default_factory=Store)
    separation: Separation = Field(default_factory=Separation)
    executor: Executor = Field(default_factory=Executor)
    trial_timeout_s: float = Field(600.0, gt=0)
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must not be empty")
        return v


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per field path: ``precision.1.curated-fp32.ops: Input should be a valid list``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def parse_config(data: Any, source: str | None = None, registry: Any = None) -> ExperimentConfig:
    """Validate a config mapping; with a registry, also plugin names and each plugin's options."""
    if not isinstance(data, dict):
        raise ConfigError([f"the config must be a mapping of keys (name, model, fixtures, ...), got {type(data).__name__}"], source)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source) from None
    if registry is not None:
        problems = check_plugins(cfg, registry)
        if problems:
            raise ConfigError(problems, source)
    return cfg


def check_plugins(cfg: ExperimentConfig, registry: Any) -> list[str]:
    """Problems with plugin names, plugin options and fixtures, one line each."""
    from htx.plugins import unknown_name_message

    problems: list[str] = []
    for axis in AXES:
        seen: set[str] = set()
        for i, entry in enumerate(getattr(cfg, axis)):
            names = registry.names(axis)
            if entry.name not in names:
                problems.append(f"{axis}.{i}: " + unknown_name_message(axis, entry.name, names))
                continue
            cls = registry.get(axis, entry.name)
            try:
                cls.Params(**entry.params)
            except ValidationError as exc:
                for line in format_validation_error(exc):
                    problems.append(f"{axis}.{i}.{entry.name}.{line}")
            except TypeError as exc:
                problems.append(f"{axis}.{i}.{entry.name}: {exc}")
            if entry.key() in seen:
                problems.append(f"{axis}.{i}: {entry.key()!r} appears twice; remove the duplicate")
            seen.add(entry.key())
    from htx.fixtures import check_fixture_entry

    for i, fx in enumerate(cfg.fixtures):
        msg = check_fixture_entry(fx)
        if msg:
            problems.append(f"fixtures.{i}: {msg}")
    from htx.applicability import config_surgery_problems

    problems.extend(config_surgery_problems(cfg, registry))
    return problems


def load_config(path: str | Path, registry: Any = None) -> ExperimentConfig:
    """Read YAML and validate it (plugin names and options too when a registry is given)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"file not found: {path}. Pass the path of a YAML config, e.g. configs/quickstart.yaml"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}{problem}. Fix the YAML syntax (indentation, colons, quotes)."], str(path)) from None
    if data is None:
        raise ConfigError(["the file is empty; a config needs at least `name` and `fixtures`"], str(path))
    return parse_config(data, str(path), registry)
