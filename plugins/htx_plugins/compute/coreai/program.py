"""The Core AI side: a surgery's inner model as a ``torch.export`` program typed by an assignment, converted with
``coreai-torch`` to a ``.aimodel``, and read back through the runtime's asset API (which works on Linux).

**Ops and keys.** The exported program (core ATen, then coreai-torch's decompositions) lists its op calls in
execution order; each gets its MIL type from the aten -> MIL table and its portable key from the node's module
stack (``nn_module_stack``), the same keys as the torch unit, so an assignment found on any unit moves here by
the transfer rule.

**Typing.** An op assigned FP16 gets its float inputs cast to FP16 (``aten._to_copy``) and its output cast back
to FP32 in the program itself, so the converter sees typed ops: FP16 where assigned, FP32 everywhere else, the
program's inputs and outputs FP32. A decomposition the converter lacks (``aten.var.correction``, the demucs
normalization's ``std``) is given as mean / sub / mul / sum / div.
"""

from __future__ import annotations

import math
import operator
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from htx.api import (
    Assignment,
    OpInfo,
    is_compute,
    mil_type_for_aten,
    model_prefix,
    number_ops,
    portable_module,
)

INSTALL = "pip install 'htx[coreai]'"


def available() -> tuple[bool, str]:
    if sys.version_info < (3, 11):
        return False, f"Core AI needs Python >= 3.11 (this is {sys.version_info.major}.{sys.version_info.minor}) and {INSTALL}"
    try:
        import coreai_torch  # noqa: F401
    except ImportError as exc:
        return False, f"Core AI needs Python >= 3.11 and {INSTALL} ({exc.name} is not installed)"
    return True, ""


def _var(x: torch.Tensor, dim: Any = None, *, correction: Any = None, keepdim: bool = False) -> torch.Tensor:
    dims = list(range(x.dim())) if dim is None else [d % x.dim() for d in dim]
    n = math.prod(x.shape[d] for d in dims)
    c = 1 if correction is None else correction
    d = x - torch.mean(x, dims, keepdim=True)
    return torch.sum(d * d, dims, keepdim=keepdim) / (n - c)


def decompositions() -> dict[Any, Any]:
    from coreai_torch import get_decomp_table

    table = dict(get_decomp_table())
    table[torch.ops.aten.var.correction] = _var
    return table


@dataclass
class Exported:
    program: Any  # torch.export.ExportedProgram (FP32)
    ops: list[OpInfo]
    nodes: dict[str, Any]  # op name -> fx node


def export_program(inner: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Exported:
    """The inner model as an exported program in the converter's ATen, with its op list."""
    torch.backends.mha.set_fastpath_enabled(False)
    inner = inner.to("cpu").eval()
    inputs = tuple(t.detach().cpu().float() for t in example_inputs)
    ep = torch.export.export(inner, inputs).run_decompositions(decompositions())
    prefix = model_prefix(inner)
    listed: list[tuple[Any, str, str]] = []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue  # getitem and other Python calls are no ops of the model
        if not (isinstance(val, torch.Tensor) or (isinstance(val, (tuple, list)) and val and isinstance(val[0], torch.Tensor))):
            continue
        mil = mil_type_for_aten(node.target, tuple(node.args))  # args: a transposed convolution says so
        if mil is None:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        qualname = list(stack.values())[-1][0] if stack else ""
        listed.append((node, mil, portable_module(qualname, prefix)))
    ordinals = number_ops([m for _, _, m in listed], [t for _, t, _ in listed])
    counter: dict[str, int] = {}
    ops, nodes = [], {}
    for (node, mil, module), k in zip(listed, ordinals):
        name = f"{mil}_{counter.setdefault(mil, 0)}"
        counter[mil] += 1
        val = node.meta["val"]
        floating = (val if isinstance(val, torch.Tensor) else val[0]).dtype.is_floating_point
        ops.append(OpInfo(name, mil, is_compute(mil) and floating, {"aten": str(node.target)}, module, k))
        nodes[name] = node
    return Exported(ep, ops, nodes)


def typed_program(exported: Exported, assignment: Assignment) -> tuple[Any, int]:
    """A copy of the program with the assigned ops in FP16 (casts in, and back to FP32 out); the cast count."""
    import copy
    import warnings

    with warnings.catch_warnings():  # torch's pytree warns (FutureWarning) while copying a program: not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        ep = copy.deepcopy(exported.program)
    g = ep.graph
    by_name = {n.name: n for n in g.nodes}
    casts = 0
    f16, f32 = torch.float16, torch.float32
    for op in exported.ops:
        if not op.compute or op.name not in assignment.fp16:
            continue
        node = by_name[exported.nodes[op.name].name]
        for arg in list(node.all_input_nodes):
            val = arg.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dtype == f32:
                with g.inserting_before(node):
                    cast = g.call_function(torch.ops.aten._to_copy.default, (arg,), {"dtype": f16})
                cast.meta["val"] = val.to(f16)
                node.replace_input_with(arg, cast)
                casts += 1
        val = node.meta["val"]
        if isinstance(val, torch.Tensor):
            node.meta["val"] = val.to(f16)
            outputs = [node]
        else:  # a tuple (group norm: output, mean, rstd): its getitem users carry the values
            node.meta["val"] = type(val)(v.to(f16) if isinstance(v, torch.Tensor) and v.dtype == f32 else v for v in val)
            outputs = [u for u in node.users if u.target is operator.getitem]
            for u in outputs:
                u.meta["val"] = node.meta["val"][u.args[1]]
        for out in outputs:
            low = out.meta["val"]
            if not (isinstance(low, torch.Tensor) and low.dtype == f16):
                continue
            with g.inserting_after(out):
                up = g.call_function(torch.ops.aten._to_copy.default, (out,), {"dtype": f32})
            up.meta["val"] = low.to(f32)
            out.replace_all_uses_with(up, delete_user_cb=lambda user, up=up: user is not up)
            casts += 1
    ep.graph_module.recompile()
    return ep, casts


def save_aimodel(ep: Any, path: Path) -> Path:
    """Convert with coreai-torch and write the ``.aimodel`` folder at ``path``."""
    from coreai_torch import TorchConverter

    program = TorchConverter().add_exported_program(ep).to_coreai()
    path = Path(path)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    program.save_asset(path)
    return path


def summary(path: Path) -> dict[str, Any]:
    """What the Core AI runtime's asset API reads back (on Linux too): op distribution and compute types."""
    import importlib

    runtime = importlib.import_module("coreai.runtime._coreai_runtime")  # the runtime's private asset API
    s = runtime._AIModelAsset._create(Path(path)).summary(True)
    return {"operation_distribution": dict(s.operation_distribution), "compute_types": list(s.compute_types)}


__all__ = ["INSTALL", "Exported", "available", "decompositions", "export_program", "save_aimodel", "summary", "typed_program"]
