"""``htx check-unit NAME``: do a compute unit's portable op keys match the torch unit's?

What a unit author runs (the op-identity kit's check, :func:`htx.identity.check_unit_keys`): the config's model
(the demo model by default) is prepared with one surgery on the unit and on the reference unit, and every
compute-op key one side has and the other lacks is listed, with which of them the transfer rule still maps.
"""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from htx.config import load_config, parse_config
from htx.console import err, handle_errors, out
from htx.errors import ConfigError
from htx.identity import check_unit_keys
from htx.plugins import load_registry
from htx.session import Session


def _entry(text: str) -> str | dict:
    """``coreml`` or ``{coreml: {runtime: emulated}}`` (YAML) as a plugin entry."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"unit {text!r} is neither a name nor a YAML mapping: {exc}"]) from None
    return value if isinstance(value, (str, dict)) else text


@handle_errors
def check_unit(
    unit: str = typer.Argument(..., help="compute entry: a name (coreml) or YAML ('{coreml: {runtime: emulated}}')"),
    reference: str = typer.Option("torch", "--reference", help="the unit whose keys are the reference"),
    surgery: str = typer.Option("full-hybrid", "--surgery", help="the surgery to prepare"),
    config: Path = typer.Option(None, "--config", help="take the model and cache folders from this config (default: the demo model)"),
    limit: int = typer.Option(40, help="mismatches listed per kind"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 unless the keys are identical (a unit of the reference's granularity)"),
) -> None:
    """Compare a compute unit's portable op keys with the torch unit's on the demo model and list every mismatch;
    exit 1 when an op of the unit is in a module the reference never runs (no assignment can reach it), or with
    --strict on any mismatch."""
    registry = load_registry()
    e = err()
    say = lambda m: e.print(m, highlight=False, markup=False)  # noqa: E731
    if config is not None:
        cfg = load_config(config, registry)
    else:
        cfg = parse_config({"name": "check-unit", "fixtures": ["sine_440"]}, "htx check-unit", registry)
    session = Session(cfg, registry, say, check_surgeries=False)
    result = check_unit_keys(session, _entry(unit), _entry(reference), surgery)
    o = out()
    for line in result.lines(limit):
        o.print(line, highlight=False, markup=False)
    if not result.ok or (strict and not result.identical):
        raise typer.Exit(1)
