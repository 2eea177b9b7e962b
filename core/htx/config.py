"""The experiment config: one strict pydantic model loaded from YAML.

Each grid axis (``surgery``, ``precision``, ``stft``, ``compute``) is a list of plugin entries written as a
bare name (``all-fp16``) or a one-key mapping (``{curated-fp32: {ops: [softmax]}}``); each plugin's options
are validated by that plugin's own ``Params`` model. :func:`load_config` validates everything, plugin
names included, and whether each surgery applies to the model, without loading weights (demo and random
models are checked on a meta-device skeleton; see :mod:`htx.applicability`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from htx.applicability import config_surgery_problems
from htx.axes import AXES, axis_names
from htx.config_executor import (  # noqa: F401 - part of the config's public names
    EXECUTOR_KINDS,
    RAY_INSTALL,
    Executor,
    LocalExecutor,
    RayExecutor,
    SerialExecutor,
    Strict,
    executor_override,
)
from htx.criteria import DEFAULT_SNR_DB
from htx.errors import ConfigError, format_validation_error
from htx.fixtures import FixtureEntry, check_fixture_entry
from htx.models import check_random_kwargs, model_skeleton
from htx.plugins import unknown_name_message

if TYPE_CHECKING:
    from htx.plugins import Registry

#: Where results go unless the config's ``store.path`` or ``--db`` says otherwise.
DEFAULT_DB = "experiments/htx.sqlite"


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


class Targets(Strict):
    """What a trial must reach: finite output and ``within_tol`` (``|out - ref| <= atol + rtol |ref|``) or
    ``snr_db``; ``stft_rtol`` is the STFT parity bar (max relative error against the exact Demucs STFT)."""

    snr_db: float = DEFAULT_SNR_DB
    rtol: float = Field(1e-3, ge=0)
    atol: float = Field(1e-4, ge=0)
    stft_rtol: float = Field(1e-5, ge=0)

    @field_validator("snr_db")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"snr_db must be a finite number of dB, got {v}")
        return v


class Latency(Strict):
    warmup: int = Field(1, ge=0)
    repeats: int = Field(3, ge=1)


class Store(Strict):
    path: str = DEFAULT_DB
    cache_dir: str = "experiments/cache"
    artifacts_dir: str = "experiments/runs"


class Separation(Strict):
    """How long audio is cut into model segments (as demucs's ``apply_model``)."""

    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    transition_power: float = Field(1.0, ge=1.0)
    batch_size: int = Field(1, ge=1)


class ExperimentBase(Strict):
    """The whole experiment but its axes. See ``configs/quickstart.yaml`` for a commented example.

    :func:`experiment_model` adds one ``list[PluginEntry]`` field per axis of :data:`htx.axes.AXES`
    (``cfg.surgery``, ``cfg.precision``, ...; ``cfg.entries(axis)``); :class:`ExperimentConfig` declares those
    of the built-in axes. Build configs with :func:`parse_config`.
    """

    name: str
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(kind="demo"))
    fixtures: list[FixtureEntry] = Field(min_length=1)
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

    def entries(self, axis: str) -> list[PluginEntry]:
        """The plugin entries of ``axis``."""
        return getattr(self, axis)


def _axis_field(axis: str) -> Any:
    """The config field of a built-in axis: a non-empty list of plugin entries, defaulting to the axes table's default."""
    default = next(a.default for a in AXES if a.name == axis)
    return Field(default_factory=lambda: [PluginEntry(name=default)], min_length=1)


class ExperimentConfig(ExperimentBase):
    """The experiment config: :class:`ExperimentBase` plus one ``list[PluginEntry]`` per built-in axis, declared
    here so a type checker follows ``cfg.surgery`` etc. (their defaults come from the axes table). An axis added
    to the table later gets its field from :func:`experiment_model`."""

    surgery: list[PluginEntry] = _axis_field("surgery")
    precision: list[PluginEntry] = _axis_field("precision")
    stft: list[PluginEntry] = _axis_field("stft")
    compute: list[PluginEntry] = _axis_field("compute")


@functools.cache
def _experiment_model(axes: tuple[tuple[str, str], ...]) -> type[ExperimentConfig]:
    fields: dict[str, Any] = {
        name: (list[PluginEntry], Field(default_factory=functools.partial(lambda d: [PluginEntry(name=d)], default), min_length=1))
        for name, default in axes if name not in ExperimentConfig.model_fields
    }
    if not fields:
        return ExperimentConfig
    return create_model("ExperimentConfig", __base__=ExperimentConfig, **fields)


def experiment_model() -> type[ExperimentConfig]:
    """The config model for the axes in the table now: :class:`ExperimentConfig`, plus a field per added axis."""
    return _experiment_model(tuple((a.name, a.default) for a in AXES))


Override = Callable[[dict[str, Any]], dict[str, Any]]


def parse_config(
    data: Any, source: str | None = None, registry: Any = None, override: Override | None = None, check_model: bool = True,
    check_files: bool = True,
) -> ExperimentConfig:
    """Validate a config mapping; with a registry, also plugin names and each plugin's options.

    ``check_model=False`` skips building the model's skeleton to check the surgeries against it, and
    ``check_files=False`` skips reading audio fixtures (a worker, whose driver has checked both already; a
    fixture that goes bad later fails its own trials).

    ``override`` edits the raw mapping before validation (command-line flags such as ``--executor``).
    """
    if not isinstance(data, dict):
        raise ConfigError([f"the config must be a mapping of keys (name, model, fixtures, ...), got {type(data).__name__}"], source)
    if override is not None:
        data = override(data)
    try:
        model = experiment_model()
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model), source) from None
    if registry is not None:
        problems = check_plugins(cfg, registry, check_model, check_files)
        if problems:
            raise ConfigError(problems, source)
    return cfg


def check_plugins(cfg: ExperimentConfig, registry: Registry, check_model: bool = True, check_files: bool = True) -> list[str]:
    """Problems with plugin names, plugin options and fixtures, one line each."""
    problems: list[str] = []
    for axis in axis_names():
        seen: set[str] = set()
        for i, entry in enumerate(cfg.entries(axis)):
            names = registry.names(axis)
            if entry.name not in names:
                problems.append(f"{axis}.{i}: " + unknown_name_message(axis, entry.name, names))
                continue
            cls = registry.get(axis, entry.name)
            try:
                cls.Params(**entry.params)
            except ValidationError as exc:
                for line in format_validation_error(exc, cls.Params):
                    problems.append(f"{axis}.{i}.{entry.name}.{line}")
            except TypeError as exc:
                problems.append(f"{axis}.{i}.{entry.name}: {exc}")
            if entry.key() in seen:
                problems.append(f"{axis}.{i}: {entry.key()!r} appears twice; remove the duplicate")
            seen.add(entry.key())
    channels = model_channels(cfg.model) if check_model else None
    for i, fx in enumerate(cfg.fixtures):
        if fx.path is not None and not check_files:
            continue
        msg = check_fixture_entry(fx, channels)
        if msg:
            problems.append(f"fixtures.{i}: {msg}")
    if check_model:
        problems.extend(config_surgery_problems(cfg, registry))
    return problems


def model_channels(model: ModelConfig) -> int | None:
    """The audio channel count of the configured model from its skeleton (no weights), or None when only
    the weights tell (path and pretrained models) or the model cannot be built (reported elsewhere)."""
    try:
        skeleton = model_skeleton(model)
    except Exception:
        return None
    return None if skeleton is None else int(skeleton.audio_channels)


def load_config(path: str | Path, registry: Any = None, override: Override | None = None) -> ExperimentConfig:
    """Read YAML and validate it (plugin names and options too when a registry is given)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"file not found: {path}. Pass the path of a YAML config, e.g. configs/quickstart.yaml"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"the file is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                           "a config is a YAML text file: check the path, or save it as UTF-8"], str(path)) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a folder; pass the path of a YAML config file"], str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}{problem}. Fix the YAML syntax (indentation, colons, quotes)."], str(path)) from None
    if data is None:
        raise ConfigError(["the file is empty; a config needs at least `name` and `fixtures`"], str(path))
    return parse_config(data, str(path), registry, override)
