"""First-order FP16 noise per op from gradients: the projection step every gradient-giving unit shares.

A unit runs its program once in FP32, keeping each compute op's FP32 output (in the autograd graph) and its
local error ``e_i`` (the op run in low precision from the same inputs, minus the FP32 output). Then
``E[((J_i^T r) . e_i)^2] = ||J_i e_i||^2`` for Gaussian output projections ``r``: each backward pass of
``(y * r).sum()`` gives ``J_i^T r`` at every op at once. :func:`project_noise` does that part, so the torch
unit and the Core ML emulator compute the estimate the same way (see ``ComputeUnit.fp16_noise``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensors = torch.Tensor | Sequence[torch.Tensor]


def _as_list(t: Tensors) -> list[torch.Tensor]:
    return [t] if isinstance(t, torch.Tensor) else list(t)


def project_noise(
    y: torch.Tensor, outputs: dict[str, Tensors], errors: dict[str, Tensors], device: torch.device,
    projections: int = 8, seed: int = 0,
) -> dict[str, float]:
    """Noise power each op adds at ``y``, relative to ``y``'s power: ``||J_i e_i||^2 / ||y||^2``.

    ``outputs[name]`` are the op's FP32 outputs in ``y``'s autograd graph, ``errors[name]`` its local errors
    (same shapes; an op with several outputs sums over them). Ops whose outputs do not reach ``y`` get 0.
    The sums are kept on ``device`` (the unit's), whatever device ``y`` is on; one host sync per projection.
    """
    names = [n for n in outputs if n in errors and all(t.requires_grad for t in _as_list(outputs[n]))]
    flat = [t for n in names for t in _as_list(outputs[n])]
    owner = [i for i, n in enumerate(names) for _ in _as_list(outputs[n])]
    errs = [e for n in names for e in _as_list(errors[n])]
    ref_power = float((y.detach().double() ** 2).sum())
    acc = torch.zeros(len(names), dtype=torch.float64, device=device)
    index = torch.tensor(owner, dtype=torch.long, device=device)
    gen = torch.Generator(device=y.device).manual_seed(seed)
    for k in range(projections):
        r = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)
        grads = torch.autograd.grad((y * r).sum(), flat, retain_graph=k < projections - 1, allow_unused=True)
        zero = acc.new_zeros(())
        dots = [zero if g is None else (g.double() * e.double()).sum().to(device) for g, e in zip(grads, errs)]
        if dots:
            per = acc.new_zeros(len(names)).index_add_(0, index, torch.stack(dots))
            acc += per**2  # one host sync per projection, not per op
    scale = 1.0 / (projections * max(ref_power, 1e-30))
    out = dict(zip(names, (acc * scale).tolist()))
    return {n: (v if math.isfinite(v) else math.inf) for n, v in out.items()}
