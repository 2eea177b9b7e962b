"""Rewrite a module tree without touching the original: replaced modules get new objects, weights stay shared.

Surgeries that swap submodules (attention, normalization) must leave the loaded model alone, because the
FP32 reference is that model's own forward pass. Deep-copying a full-size HTDemucs would double its memory,
so :func:`replace_modules` shallow-copies only the modules on the path to a replacement and shares every
parameter, buffer and untouched subtree with the original (moving the view with ``.to()`` moves the
original's weights too). Hooks registered on the original later do not fire in the view's copied modules.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def replace_modules(root: nn.Module, fn: Callable[[str, nn.Module], nn.Module | None]) -> tuple[nn.Module, list[str]]:
    """A rewritten view of ``root`` and the dotted names of the modules that ``fn`` replaced.

    ``fn(name, module)`` returns a replacement module or None to keep (and descend into) ``module``;
    a replacement is not descended into. ``root`` itself is never modified.
    """
    replaced: list[str] = []

    def visit(name: str, module: nn.Module) -> nn.Module:
        new = fn(name, module)
        if new is not None:
            replaced.append(name)
            return new
        changed: dict[str, nn.Module] = {}
        for child_name, child in module._modules.items():
            if child is None:
                continue
            new_child = visit(f"{name}.{child_name}" if name else child_name, child)
            if new_child is not child:
                changed[child_name] = new_child
        if not changed:
            return module
        clone = copy.copy(module)  # shares __dict__ values: give the clone its own child table and hooks
        clone.__dict__["_modules"] = {**module._modules, **changed}
        for key, value in module.__dict__.items():
            if "hook" in key and isinstance(value, dict):
                clone.__dict__[key] = copy.copy(value)
        return clone

    return visit("", root), replaced
