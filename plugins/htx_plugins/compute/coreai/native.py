"""The native Core AI runtime (macOS 27): a typed ``.aimodel`` per assignment, loaded with ``AIModel.load`` and
called once per batch of segments.

Everything that touches the runtime goes through :func:`runtime_available`, :func:`load_function` and
:func:`call`, the boundary that tests replace with a mock. **This path is untested on hardware** (no macOS 27
machine here), as native Core ML's is. The runtime (coreai-core 1.0.0b3) exposes no compute plan, so a native
trial's placement still comes from the typed program.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htx.api import macos_runtime_available
from htx_plugins.compute.coreai.program import INSTALL

#: The macOS major version the Core AI runtime needs.
MACOS = 27


def runtime_available() -> tuple[bool, str]:
    """``(True, "")`` where the Core AI runtime can load and run a model, else ``(False, why)``."""

    def probe() -> None:
        from coreai.runtime import AIModel  # noqa: F401

    return macos_runtime_available("Core AI", "coreai-core", probe, INSTALL, min_major=MACOS)


def load_function(path: Path, units: str) -> Any:
    """The runtime boundary: the asset's first function, loaded (and specialized) for ``units``."""
    import asyncio

    from coreai.runtime import AIModel, SpecializationOptions

    options = SpecializationOptions.cpu_only() if units == "cpu_only" else None
    model = asyncio.run(AIModel.load(Path(path), options))
    return model.load_function(model.function_names[0])


def call(function: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The runtime boundary: one call of ``function`` on named float32 arrays, outputs by name."""
    import asyncio

    from coreai.runtime import NDArray

    out = asyncio.run(function({name: NDArray(array) for name, array in feed.items()}))
    return {name: np.asarray(value.numpy()) for name, value in out.items()}


def assignment_tag(fp16: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fp16)).encode()).hexdigest()[:16]


@dataclass
class NativeForward:
    """Callable with the inner model's inputs, running the loaded function on the Core AI runtime."""

    function: Any
    path: Path

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        desc = self.function.desc
        names = list(desc.input_names)
        if len(names) != len(inputs):
            raise RuntimeError(f"the Core AI function {desc.name!r} takes {len(names)} inputs ({', '.join(names)}); "
                               f"the pipeline gave {len(inputs)}")
        feed = {n: t.detach().to("cpu", torch.float32).contiguous().numpy() for n, t in zip(names, inputs)}
        result = call(self.function, feed)
        return tuple(torch.from_numpy(np.ascontiguousarray(result[n], dtype=np.float32)) for n in desc.output_names)


__all__ = ["MACOS", "NativeForward", "assignment_tag", "call", "load_function", "runtime_available"]
