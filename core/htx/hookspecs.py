"""pluggy hook specifications: one registration hook per plugin kind.

Every hook receives a ``register`` callback. A plugin calls ``register(SomeClass)`` once per class it
provides. The class must have a unique ``name`` within its kind, a pydantic ``Params`` model for its
options and a docstring with a complete example (see :mod:`htx.contracts` for the base classes).
Hooks are called once, when the plugin manager builds its registries; keyword arguments may be added
to ``register`` in later versions, so plugins should pass only the class.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "htx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def htx_register_surgeries(register: Callable[[type], None]) -> None:
    """Register model-surgery classes (subclasses of :class:`htx.contracts.Surgery`).

    A surgery's ``build(model)`` returns the STFT-free inner model taking ``(spec_cac, mix)`` and
    returning ``(spec_out, wave_out)``, plus optional host-side ``pre``/``post`` steps.
    """


@hookspec
def htx_register_precision_policies(register: Callable[[type], None]) -> None:
    """Register precision-policy classes (subclasses of :class:`htx.contracts.PrecisionPolicy`).

    A policy decides, for each op instance of a prepared model, FP16 or FP32. Static policies implement
    ``select(ops)``; search policies implement ``search(ops, evaluate)`` and get a callback that runs
    the trial pipeline for an assignment on every fixture of the run.
    """


@hookspec
def htx_register_stft_backends(register: Callable[[type], None]) -> None:
    """Register STFT backends (subclasses of :class:`htx.contracts.STFTBackend`).

    ``stft(x)`` maps real audio ``[..., L]`` to the complex spectrogram ``[..., F, T]`` in Demucs
    conventions; ``istft(z, length)`` inverts it.
    """


@hookspec
def htx_register_compute_units(register: Callable[[type], None]) -> None:
    """Register compute units (subclasses of :class:`htx.contracts.ComputeUnit`).

    A compute unit prepares an inner model once (``prepare``), lists its op instances (``ops``) and
    compiles it under a precision assignment (``compile``) into a callable.
    """
