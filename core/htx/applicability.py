"""Whether each configured surgery applies to the model, checked before any trial runs.

``htx validate`` (through :func:`htx.config.check_plugins`) checks against :func:`htx.models.model_skeleton`
(demo and random models; path and pretrained models need their weights, so they are checked when the
runner has loaded them, before the first trial).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from htx.errors import HtxError, ModelError
from htx.models import model_skeleton


def surgery_problems(registry: Any, entries: list[Any], model: nn.Module) -> list[str]:
    """One line per ``surgery`` entry whose ``check(model)`` fails (unknown names and bad options skipped:
    config validation reports those)."""
    problems = []
    for i, entry in enumerate(entries):
        if entry.name not in registry.names("surgery"):
            continue
        try:
            surgery = registry.create("surgery", entry.name, entry.params)
        except Exception:
            continue
        try:
            surgery.check(model)
        except ModelError as exc:
            problems.append(f"surgery.{i}: {exc}")
    return problems


def config_surgery_problems(cfg: Any, registry: Any) -> list[str]:
    """:func:`surgery_problems` against the config's model skeleton (nothing for path/pretrained models)."""
    try:
        skeleton = model_skeleton(cfg.model)
    except HtxError as exc:
        return [f"model: {exc}"]
    except Exception as exc:  # HTDemucs asserts on inconsistent arguments
        return [f"model: cannot build this HTDemucs ({type(exc).__name__}: {exc}); check model.random's arguments"]
    if skeleton is None:
        return []
    return surgery_problems(registry, cfg.surgery, skeleton)
