"""What every plugin class shares: ``name``, strict ``Params``, ``available()`` and its label.

Every plugin kind has an abstract base class here; what a plugin must implement is an
``@abstractmethod``, so a class that misses one is refused when it is registered, naming the method.
A plugin class sets ``name`` (unique within its kind), defines a pydantic ``Params`` model for its
options (a subclass of :class:`Params`: strict, no unknown keys) and documents itself with a complete
example in its docstring.

**Lifetime of a plugin instance.** The trial builder (:mod:`htx.builder`) creates one instance per config
entry and process, the first time a trial needs it, and reuses it for every later trial and search
evaluation of that entry in the process: an STFT backend's transform caches, a compute unit's compiled
programs and a policy's state survive across trials. A parallel run has one instance per entry in each
worker. Instances must therefore not keep per-trial state that changes results.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for plugin options: strict (no coercion: ``"20"`` is not an int, ``true`` is not 1),
    immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Plugin(ABC):  # noqa: B024 - abstract through its kinds (Surgery.build, ...), never registered itself
    """Common behaviour of every plugin class.

    ``name`` is unique within the plugin's kind. ``Params`` validates the options given in the config.
    """

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the plugin can run here, else ``(False, reason)``."""
        return True, ""

    @property
    def label(self) -> str:
        """``name`` plus the options that differ from their defaults, e.g. ``torch[low_dtype=bf16]``."""
        changed = {k: v for k, v in self.params.model_dump().items() if v != self.Params.model_fields[k].default}
        if not changed:
            return self.name
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(changed.items()))
        return f"{self.name}[{inner}]"

    def __repr__(self) -> str:
        return f"<{self.kind} {self.label}>"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


__all__ = ["Params", "Plugin"]
