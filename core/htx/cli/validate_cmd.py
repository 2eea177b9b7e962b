"""``htx validate CONFIG``: check a config (plugin names and options included) without loading weights."""

from __future__ import annotations

from pathlib import Path

import typer

from htx.axes import axis_names
from htx.config import load_config
from htx.console import handle_errors, out
from htx.grid import expand_grid
from htx.plugins import load_registry


@handle_errors
def validate(config: Path = typer.Argument(..., help="experiment config (YAML)")) -> None:
    """Validate CONFIG: schema, plugin names, plugin options, fixtures, and whether each surgery applies to the
    model (demo and random models: from their architecture, no weights; path and pretrained models are
    checked when the run starts, before any trial)."""
    cfg = load_config(config, load_registry())
    n = len(expand_grid(cfg))
    axes = " x ".join(f"{len(cfg.entries(a))} {a}" for a in axis_names())
    out().print(f"{config}: OK ({axes} x {len(cfg.fixtures)} fixtures = {n} trials)", highlight=False)
