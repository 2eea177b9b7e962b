"""Consoles and error reporting for commands (the core's and plugins'): results on stdout, messages on stderr, no tracebacks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from htx.errors import ConfigError, HtxError

F = TypeVar("F", bound=Callable[..., Any])


def out() -> Console:
    """Results go to stdout (wide when piped, so tables are not squeezed into 80 columns)."""
    import sys

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 220)


def err() -> Console:
    """Messages and progress go to stderr."""
    return Console(stderr=True, soft_wrap=True)


def handle_errors(fn: F | None = None, *, code: int = 1) -> Any:
    """Show :class:`HtxError` messages (one bullet per problem for configs) and exit ``code``, no traceback.

    ``@handle_errors`` exits 1; ``@handle_errors(code=2)`` exits 2 (``htx run``: 1 means a trial failed).
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except ConfigError as exc:
                e = err()
                e.print(f"[red]Error:[/red] invalid config{' ' + exc.source if exc.source else ''}", highlight=False)
                for p in exc.shown:
                    e.print(f"  • {p}", markup=False, highlight=False)
                raise typer.Exit(code) from None
            except HtxError as exc:
                # The message is plain text (it may hold [brackets]); only the prefix is styled.
                err().print(Text.assemble(("Error:", "red"), f" {exc}"), highlight=False)
                raise typer.Exit(code) from None

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
