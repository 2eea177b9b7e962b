"""pluggy hook specifications: one registration hook per plugin kind, plus one for CLI commands.

Every registration hook receives a ``register`` callback. A plugin calls ``register(SomeClass)`` once per
class it provides; the class must subclass the kind's base class in :mod:`htx.api`, implement its
abstract methods, have a unique ``name`` within its kind, a strict pydantic ``Params`` model for its
options and a docstring with a complete example (a meta-test checks the built-ins). Registration hooks are
called once per registry, when :func:`htx.plugins.build_registry` builds it; keyword arguments may be added
to ``register`` in later versions, so plugins should pass only the class. The axes these hooks feed are
listed in :data:`htx.axes.AXES`.

A hook implementation must carry ``@hookimpl``: a module loaded through the ``htx`` entry-point group
that defines a function named like a hook without it gets a warning naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "htx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def htx_register_surgeries(register: Callable[[type], None]) -> None:
    """Register model-surgery classes (subclasses of :class:`htx.api.Surgery`).

    A surgery implements ``build(model) -> InnerModel``: an ``nn.Module`` whose ``forward(spec_cac, mix)``
    returns ``(spec_out, wave_out)`` with no complex tensors and no STFT, plus optional
    ``host_pre``/``host_post`` that the pipeline runs on the host. ``check(model)`` may refuse a model.
    """


@hookspec
def htx_register_precision_policies(register: Callable[[type], None]) -> None:
    """Register precision-policy classes: subclasses of :class:`htx.api.StaticPolicy` or
    :class:`htx.api.SearchPolicy`.

    A static policy implements ``select(ops: list[OpInfo]) -> Assignment``. A search policy implements
    ``search(ctx: SearchContext) -> SearchResult``; ``ctx.evaluate(assignment)`` runs the trial pipeline on
    every fixture of the run (worst case over fixtures) and ``ctx.record(assignment)`` returns per-op
    statistics of one pass.
    """


@hookspec
def htx_register_stft_backends(register: Callable[[type], None]) -> None:
    """Register STFT backends (subclasses of :class:`htx.api.STFTBackend`).

    ``stft(x, n_fft) -> z`` maps real audio ``[..., L]`` to complex ``[..., n_fft // 2, ceil(L / hop)]`` in
    Demucs's exact conventions; ``istft(z, length, n_fft)`` inverts it. The full padding, cropping and
    DC/Nyquist rules are in the :class:`~htx.api.STFTBackend` docstring.
    """


@hookspec
def htx_register_compute_units(register: Callable[[type], None]) -> None:
    """Register compute units (subclasses of :class:`htx.api.ComputeUnit`).

    A unit implements ``prepare(inner, example_inputs, cache_dir) -> prepared`` (once per model, surgery
    and shape), ``ops(prepared) -> list[OpInfo]`` and ``compile(prepared, assignment) -> callable``;
    optionally ``record``, ``export`` and ``available() -> (bool, reason)``.
    """


@hookspec
def htx_register_commands(app: Any, bench: Any) -> None:
    """Add CLI commands: ``app`` is the ``htx`` typer app, ``bench`` its ``htx bench`` group.

    Called once when the command line is built. Example::

        @hookimpl
        def htx_register_commands(app, bench):
            @bench.command("my-bench")
            def my_bench(seconds: float = 10.0):
                '''Time my thing.'''
    """
