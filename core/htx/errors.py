"""Exceptions that carry a message meant for the user (shown without a traceback)."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import ValidationError


class HtxError(Exception):
    """An error whose message says what went wrong and how to fix it."""


#: How many config problems an error message lists before it summarises the rest.
SHOWN_PROBLEMS = 20


class ConfigError(HtxError):
    """The experiment config is invalid. ``problems`` holds one line per field path."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"Invalid config {source}" if source else "Invalid config"
        more = len(problems) - SHOWN_PROBLEMS
        #: what a message shows: the first problems, then a count of the rest
        self.shown = problems[:SHOWN_PROBLEMS] + (
            [f"... and {more} more problem{'s' if more != 1 else ''} (fix these first, then run again)"] if more > 0 else [])
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.shown))


class PluginError(HtxError):
    """A plugin failed to load, registered a duplicate name, or broke its contract."""


class AudioError(HtxError):
    """Audio could not be read or is unusable (empty, corrupt, NaN/Inf samples)."""


class ModelError(HtxError):
    """The model could not be built or loaded, or its weights are unusable."""


class UnavailableError(HtxError):
    """A plugin cannot run on this platform; trials using it are recorded as `unavailable`."""


def format_validation_error(exc: ValidationError, model: type | None = None) -> list[str]:
    """One line per field path: ``precision.1.curated-fp32.ops: Input should be a valid list``.

    With the pydantic ``model`` that was validated, an unknown key also gets the closest allowed name
    (``Did you mean 'precision'?``) and the list of allowed keys.
    """
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        msg = err["msg"].removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden" and model is not None:
            allowed = _fields_at(model, err["loc"][:-1])
            if allowed:
                close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                msg = f"unknown key {str(err['loc'][-1])!r}.{hint} Allowed: {', '.join(sorted(allowed))}"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the pydantic model reached by following ``loc`` from ``model`` ([] if unknown)."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_of(fields[part].annotation)
        if current is None:
            return []
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
