"""Exceptions that carry a message meant for the user (shown without a traceback)."""

from __future__ import annotations

from pydantic import ValidationError


class HtxError(Exception):
    """An error whose message says what went wrong and how to fix it."""


class ConfigError(HtxError):
    """The experiment config is invalid. ``problems`` holds one line per field path."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"Invalid config {source}" if source else "Invalid config"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


class PluginError(HtxError):
    """A plugin failed to load, registered a duplicate name, or broke its contract."""


class AudioError(HtxError):
    """Audio could not be read or is unusable (empty, corrupt, NaN/Inf samples)."""


class ModelError(HtxError):
    """The model could not be built or loaded, or its weights are unusable."""


class UnavailableError(HtxError):
    """A plugin cannot run on this platform; trials using it are recorded as `unavailable`."""


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per field path: ``precision.1.curated-fp32.ops: Input should be a valid list``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after", "function-before"))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines
