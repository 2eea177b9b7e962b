"""Content keys for what a compute unit derives from an inner model (a conversion, an export) and caches on disk."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import torch
from torch import nn


def content_key(inner: nn.Module, example_inputs: tuple[torch.Tensor | None, ...], *extra: str) -> str:
    """A hash of what determines a program derived from ``inner``: its class (and the source of the module that
    defines it, so an edited surgery is not served a stale program), its modules' simple attributes, every
    parameter and buffer, the input shapes and dtypes, the torch and demucs versions, and ``extra`` (the unit's
    own settings and versions)."""
    h = hashlib.sha256()
    cls = type(inner)
    parts: list[str] = [*extra, f"{cls.__module__}.{cls.__qualname__}", torch.__version__]
    try:
        import demucs

        parts.append(demucs.__version__)
    except Exception:  # pragma: no cover - demucs is a dependency
        pass
    try:
        parts.append(hashlib.sha256(inspect.getsource(inspect.getmodule(cls)).encode()).hexdigest())  # type: ignore[arg-type]
    except (OSError, TypeError):
        pass
    for name, mod in inner.named_modules():
        simple = {k: v for k, v in sorted(vars(mod).items()) if not k.startswith("_") and _simple(v)}
        parts.append(f"{name}:{type(mod).__qualname__}:{simple!r}")
    parts.append(repr([None if t is None else (tuple(t.shape), str(t.dtype)) for t in example_inputs]))
    h.update("|".join(parts).encode())
    for name, t in sorted(inner.state_dict().items()):
        h.update(name.encode())
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:24]


def _simple(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_simple(x) for x in v)
    return isinstance(v, (int, float, str, bool, type(None)))


__all__ = ["content_key"]
