"""What the driver ships to workers: chunks of trial specs, the run payload, and per-trial resources.

Everything here is plain data (picklable) and pure functions, so it is the same for every executor.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htx.config import ExperimentConfig
from htx.errors import HtxError
from htx.grid import TrialSpec
from htx.interfaces import ComputeUnit
from htx.plugins import Registry, load_registry

#: At most this many trials per chunk: long chunks delay load balancing at the end of a run.
MAX_CHUNK = 8


@dataclass(frozen=True)
class Chunk:
    """Trials sharing one combo key (surgery, compute, precision), run one after another by one worker."""

    id: int
    specs: tuple[TrialSpec, ...]


@dataclass(frozen=True)
class RunPayload:
    """Everything a worker needs besides its chunk; the same for every chunk of a run (sent once per worker)."""

    run_id: str
    config: dict[str, Any]  # the validated config (``model_dump``), relative paths made absolute
    model_hash: str  # the driver's model: a worker that builds a different one refuses to run
    plugin_modules: tuple[str, ...]  # importable modules of plugins registered outside entry points
    sys_path: tuple[str, ...]  # the driver's import path; workers append the entries they lack and have

    @property
    def key(self) -> str:
        """Identity of the run for a worker's in-memory cache."""
        digest = hashlib.sha1(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.run_id}:{self.model_hash}:{digest}"


def chunk_size(n_trials: int, slots: int, max_chunk: int = MAX_CHUNK) -> int:
    """About two chunks per worker slot (so the tail balances), at most ``max_chunk`` trials each."""
    return max(1, min(max_chunk, math.ceil(n_trials / (2 * max(1, slots)))))


def make_chunks(specs: Sequence[TrialSpec], slots: int, is_search: Callable[[TrialSpec], bool],
                cost: Callable[[TrialSpec], float] | None = None) -> list[Chunk]:
    """Group ``specs`` by combo key and split each group into near-equal chunks.

    A worker keeps its prepared model and precision assignment in memory between the trials of a chunk
    (and between chunks of the same key). A search policy's group is never split: its search runs once,
    in one worker, like in a serial run. Chunks are handed out longest first (search chunks, then by
    estimated ``cost``, e.g. seconds of audio), so short ones fill the gaps at the end of the run.
    """
    groups: dict[tuple[str, ...], list[TrialSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.combo_key, []).append(spec)
    size = chunk_size(len(specs), slots)
    parts: list[tuple[bool, list[TrialSpec]]] = []
    for group in groups.values():
        search = is_search(group[0])
        k = 1 if search else math.ceil(len(group) / size)
        base, extra = divmod(len(group), k)
        start = 0
        for i in range(k):
            n = base + (i < extra)
            parts.append((search, group[start:start + n]))
            start += n
    weight = cost or (lambda spec: 1.0)
    parts.sort(key=lambda p: (not p[0], -sum(weight(s) for s in p[1])))  # stable: grid order among equals
    return [Chunk(i, tuple(specs)) for i, (_, specs) in enumerate(parts)]


def grid_chunks(specs: Sequence[TrialSpec]) -> list[Chunk]:
    """One chunk per run of consecutive specs sharing a combo key, in grid order (the serial executor)."""
    chunks: list[Chunk] = []
    group: list[TrialSpec] = []
    for spec in specs:
        if group and spec.combo_key != group[0].combo_key:
            chunks.append(Chunk(len(chunks), tuple(group)))
            group = []
        group.append(spec)
    if group:
        chunks.append(Chunk(len(chunks), tuple(group)))
    return chunks


def worker_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data with every relative path made absolute (workers may run elsewhere)."""
    data = cfg.model_dump(mode="json")
    for key in ("path", "cache_dir", "artifacts_dir"):
        data["store"][key] = str(Path(data["store"][key]).absolute())
    if data["model"].get("path"):
        data["model"]["path"] = str(Path(data["model"]["path"]).absolute())
    for fx in data["fixtures"]:
        if fx.get("path"):
            fx["path"] = str(Path(fx["path"]).absolute())
    return data


def shipped_plugin_modules(registry: Registry) -> tuple[str, ...]:
    """Modules of plugins that this registry has but a fresh one would not (registered by the caller).

    Workers import them by name, so they must be importable modules; a plugin built in memory
    (``module_plugin``) cannot reach another process and is an error here.
    """
    base = set(load_registry().plugin_versions)
    extras = tuple(name for name in registry.plugin_versions if name not in base)
    for name in extras:
        module = sys.modules.get(name)
        try:
            found = importlib.util.find_spec(name) is not None
        except (ValueError, ImportError):
            found = False
        if not found or module is None or getattr(module, "__spec__", None) is None:
            raise HtxError(
                f"plugin {name!r} was registered in this process only (e.g. with htx.plugins.module_plugin), so "
                "worker processes cannot load it. Put its hooks in a module importable by the workers (on "
                "PYTHONPATH, or installed with an `htx` entry point) and register that module, or use `executor: serial`."
            )
    return extras


def trial_resources(spec: TrialSpec, registry: Registry, overrides: dict[str, dict[str, float]]) -> dict[str, float]:
    """Ray resources for one trial: the config's entry for the compute key or name, else the unit's own."""
    for key in (spec.compute.key(), spec.compute.name):
        if key in overrides:
            return dict(overrides[key])
    unit = registry.create("compute", spec.compute.name, spec.compute.params)
    return dict(unit.resources()) if isinstance(unit, ComputeUnit) else {}
