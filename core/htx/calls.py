"""Calling a plugin: its exceptions and wrong return types become errors that name the plugin and method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from htx.errors import HtxError, PluginError
from htx.failures import TrialTimeout
from htx.interfaces.base import Plugin

T = TypeVar("T")

#: Exceptions that say what happened without naming the plugin: the user's fix is not in the plugin.
_PASS_THROUGH = (HtxError, TrialTimeout, MemoryError, torch.OutOfMemoryError)


def where(plugin: Plugin, method: str) -> str:
    """``precision 'x'.select()``: how an error names a plugin's method."""
    return f"{plugin.kind} {plugin.name!r}.{method}()"


def call_plugin(plugin: Plugin, method: str, *args: Any, check: Callable[[Any, str], T] | None = None, **kwargs: Any) -> Any:
    """``plugin.method(*args, **kwargs)``; an exception it raises is prefixed with plugin and method (a
    :class:`PluginError` chained to it; htx's own errors, timeouts and out-of-memory pass as they are), and
    ``check(value, where)`` vets what it returns."""
    w = where(plugin, method)
    try:
        value = getattr(plugin, method)(*args, **kwargs)
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(f"{w} raised {type(exc).__name__}" + (f": {msg}" if msg else "")) from exc
    return check(value, w) if check is not None else value


def check_list_of(typ: type) -> Callable[[Any, str], list[Any]]:
    """A ``check`` for a list whose items are all ``typ``."""

    def check(value: Any, w: str) -> list[Any]:
        if not isinstance(value, list):
            raise PluginError(f"{w} returned {type(value).__name__}, expected list[{typ.__name__}]")
        bad = next((i for i, x in enumerate(value) if not isinstance(x, typ)), None)
        if bad is not None:
            raise PluginError(f"{w} returned a list whose item {bad} is {type(value[bad]).__name__}, expected {typ.__name__}")
        return value

    return check


def check_callable(value: Any, w: str) -> Any:
    """A ``check`` for a callable."""
    if not callable(value):
        raise PluginError(f"{w} returned {type(value).__name__}, expected a callable")
    return value


def optional(check: Callable[[Any, str], T]) -> Callable[[Any, str], T | None]:
    """``check`` that also lets ``None`` through (a method whose ``None`` means "not this way")."""

    def checked(value: Any, w: str) -> T | None:
        if value is None:
            return None
        try:
            return check(value, w)
        except PluginError as exc:
            raise PluginError(f"{exc} or None") from None

    return checked


__all__ = ["call_plugin", "check_callable", "check_list_of", "optional", "where"]
