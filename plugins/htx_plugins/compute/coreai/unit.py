"""``coreai`` compute unit: Apple's Core AI (``.aimodel``), the inner model exported and typed per assignment.

On macOS 27 with the Core AI runtime (``runtime: native``, or ``auto``) each assignment's typed program is
converted to an ``.aimodel`` (cached per assignment), loaded with ``AIModel.load`` and run natively: rows say
``coreai:native[units]`` and their latency is the device's (:mod:`.native`; unit-tested with the runtime mocked,
untested on hardware). Elsewhere the runtime cannot load a model, so trials run the typed exported program itself
in torch: every op assigned FP16 runs in FP16 between casts, every other op in FP32, exactly the program
``export`` converts (rows say ``coreai:emulated``). ``export`` writes the ``.aimodel``; its summary (op
distribution, compute types) is read back through the runtime's asset API, which works on Linux.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from htx.api import (
    Assignment,
    ComputeUnit,
    InnerModel,
    NativeOrEmulated,
    OpInfo,
    Params,
    Placement,
    UnavailableError,
    content_key,
    placement_runs,
)
from htx_plugins.compute.coreai import native
from htx_plugins.compute.coreai.program import (
    Exported,
    available,
    export_program,
    save_aimodel,
    summary,
    typed_program,
)


class CoreAIParams(Params):
    #: ``auto``: native where the Core AI runtime runs (macOS 27), emulated elsewhere; ``native`` is
    #: unavailable without the runtime (it never falls back silently); ``emulated`` always emulates.
    runtime: Literal["auto", "native", "emulated"] = "auto"
    #: Native only: ``default`` lets the runtime choose (Neural Engine, GPU, CPU); ``cpu_only`` pins the CPU.
    units: Literal["default", "cpu_only"] = "default"


@dataclass
class CoreAIPrepared:
    exported: Exported
    cache_dir: Path | None = None
    #: :func:`htx.api.content_key` of the inner model and inputs: names the folder of its typed ``.aimodel`` files
    key: str = ""
    programs: OrderedDict[frozenset[str], Any] = field(default_factory=OrderedDict)
    #: what the last export wrote: the runtime's summary of the asset and the casts typed into the program
    export_report: dict[str, Any] = field(default_factory=dict)


class CoreAIUnit(NativeOrEmulated, ComputeUnit):
    """Apple Core AI: the assignment typed into a ``torch.export`` program and converted to ``.aimodel``.

    Example config::

        compute:
          - coreai                                   # native on macOS 27, coreai:emulated elsewhere
          - coreai: {runtime: native, units: cpu_only}   # unavailable off macOS 27
    """

    name = "coreai"
    Params = CoreAIParams
    MAX_PROGRAMS = 4

    def native_available(self) -> tuple[bool, str]:
        return native.runtime_available()

    def available(self) -> tuple[bool, str]:
        ok, why = available()
        if not ok:
            return ok, why
        why = self.native_unavailable()
        return (False, why) if why else (True, "")

    @property
    def runtime(self) -> str:
        return "coreai:emulated" if self.emulated else f"coreai:native[{self.params.units}]"

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> CoreAIPrepared:
        ok, why = self.available()
        if not ok:
            raise UnavailableError(why)
        from importlib.metadata import version

        key = content_key(inner, tuple(example_inputs), "coreai", version("coreai-torch"))
        return CoreAIPrepared(export_program(inner, example_inputs), Path(cache_dir) if cache_dir is not None else None, key=key)

    def ops(self, prepared: CoreAIPrepared) -> list[OpInfo]:
        return list(prepared.exported.ops)

    def compile(self, prepared: CoreAIPrepared, assignment: Assignment) -> Any:
        if not self.emulated:
            return self._native(prepared, assignment)
        key = frozenset(assignment.fp16)
        module = prepared.programs.get(key)
        if module is None:
            ep, _ = typed_program(prepared.exported, assignment)
            module = ep.module()
            prepared.programs[key] = module
            while len(prepared.programs) > self.MAX_PROGRAMS:
                prepared.programs.popitem(last=False)

        def forward(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return tuple(module(*(a.to("cpu", torch.float32) for a in args)))

        return forward

    def _native(self, prepared: CoreAIPrepared, assignment: Assignment) -> native.NativeForward:
        """The assignment's typed ``.aimodel`` (converted once, kept under the cache in a folder of the model's
        content key: two models' programs of one assignment never share a file), loaded on the runtime."""
        import tempfile

        fp16 = frozenset(assignment.fp16)
        folder = (prepared.cache_dir or Path(tempfile.gettempdir()) / "htx") / "coreai" / prepared.key
        path = folder / f"typed-{native.assignment_tag(fp16)}.aimodel"
        if not path.exists():
            ep, _ = typed_program(prepared.exported, assignment)
            folder.mkdir(parents=True, exist_ok=True)
            save_aimodel(ep, path)
        return native.NativeForward(native.load_function(path, self.params.units), path)

    def placement(self, prepared: CoreAIPrepared, assignment: Assignment) -> Placement:
        """Precision segments of the compute ops in execution order, and the casts typed into the program."""
        runs = placement_runs(prepared.exported.ops, assignment)
        _, casts = typed_program(prepared.exported, assignment)
        return Placement(partitions=runs["partitions"], casts=casts, source="typed program")

    def export(self, prepared: CoreAIPrepared, assignment: Assignment, path: Path) -> Path:
        """Convert the typed program with coreai-torch and write the ``.aimodel`` at ``path``."""
        ep, casts = typed_program(prepared.exported, assignment)
        out = save_aimodel(ep, Path(path))
        prepared.export_report = {**summary(out), "casts": casts}
        return out


__all__ = ["CoreAIParams", "CoreAIPrepared", "CoreAIUnit"]
