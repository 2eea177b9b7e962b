"""``coreai`` compute unit: Apple's Core AI (``.aimodel``), the inner model exported and typed per assignment.

Off macOS 27 the Core AI runtime cannot load a model (``AIModel.load`` needs it), so trials run the typed
exported program itself in torch: every op assigned FP16 runs in FP16 between casts, every other op in FP32,
exactly the program ``export`` converts (rows say ``coreai:emulated``). ``export`` converts that program with
coreai-torch and writes the ``.aimodel``; its summary (op distribution, compute types) is read back through the
runtime's asset API, which works on Linux. Native execution on macOS 27 is not implemented here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from htx.api import (
    Assignment,
    ComputeUnit,
    InnerModel,
    OpInfo,
    Params,
    Placement,
    UnavailableError,
    placement_runs,
)
from htx_plugins.compute.coreai.program import (
    Exported,
    available,
    export_program,
    save_aimodel,
    summary,
    typed_program,
)


class CoreAIParams(Params):
    pass


@dataclass
class CoreAIPrepared:
    exported: Exported
    programs: OrderedDict[frozenset[str], Any] = field(default_factory=OrderedDict)
    #: what the last export wrote: the runtime's summary of the asset and the casts typed into the program
    export_report: dict[str, Any] = field(default_factory=dict)


class CoreAIUnit(ComputeUnit):
    """Apple Core AI: the assignment typed into a ``torch.export`` program and converted to ``.aimodel``.

    Example config::

        compute: [coreai]      # rows are coreai:emulated off macOS 27 (the typed program run in torch)
    """

    name = "coreai"
    Params = CoreAIParams
    emulated = True
    MAX_PROGRAMS = 4

    def available(self) -> tuple[bool, str]:
        return available()

    @property
    def runtime(self) -> str:
        return "coreai:emulated"

    def prepare(self, inner: InnerModel, example_inputs: tuple[torch.Tensor, ...], cache_dir: Path | None = None) -> CoreAIPrepared:
        ok, why = self.available()
        if not ok:
            raise UnavailableError(why)
        return CoreAIPrepared(export_program(inner, example_inputs))

    def ops(self, prepared: CoreAIPrepared) -> list[OpInfo]:
        return list(prepared.exported.ops)

    def compile(self, prepared: CoreAIPrepared, assignment: Assignment) -> Any:
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
