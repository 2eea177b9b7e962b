"""``safe-norm``: normalization statistics that cannot overflow in FP16.

A group/layer norm (and the input normalization's standard deviation) squares deviations from the mean;
in FP16 a deviation above 256 squares past 65504 and the statistics become inf. Here every such
statistic is computed on deviations scaled by their per-group maximum ``s = max |x - mean|`` first::

    r  = (x - mean) / s                      # |r| <= 1
    m2 = mean(r * r)                         # 0 <= m2 <= 1
    y  = r * rsqrt(m2 + (sqrt(eps) / s)^2)   # == (x - mean) / sqrt(var + eps)
    std = s * sqrt(m2 * N / (N - 1))         # == unbiased std

which equals the original in exact arithmetic (``var = s^2 m2``). Nothing larger than 1 in magnitude is
squared and the second moment ``m2`` stays in ``[0, 1]``; the one other square, ``(sqrt(eps) / s)^2``, is
bounded by ``eps * 2^28`` (about 2700 for eps 1e-5) because ``s`` is clamped below at ``2^-14``, the
smallest normal FP16 number. The clamp changes nothing mathematically (every ``s > 0`` gives the same
result) and keeps silence at 0 instead of 0/0. What the rewrite does not change: a runtime that
accumulates a long reduction internally in FP16 can still lose precision in its sums.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from htx.api import InnerModel
from htx_plugins.surgery.full_hybrid import FullHybrid, FullHybridInner
from htx_plugins.surgery.module_tree import replace_modules

#: Lower clamp of the per-group scale: the smallest normal FP16 number, so the scale stays representable.
SCALE_FLOOR = 2.0**-14


def scaled_deviation(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, r, s, m2)`` over ``dims``: ``r = (x - mean) / s`` with ``s = max |x - mean|``, ``m2 = mean(r^2)``."""
    mean = x.mean(dim=dims, keepdim=True)
    d = x - mean
    s = d.abs().amax(dim=dims, keepdim=True).clamp_min(SCALE_FLOOR)
    r = d / s
    m2 = (r * r).mean(dim=dims, keepdim=True)
    return mean, r, s, m2


def safe_std(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` over ``dims`` with the unbiased std of ``torch.std``, overflow-safe."""
    n = math.prod(x.shape[d] for d in dims)
    mean, _, s, m2 = scaled_deviation(x, dims)
    return mean, s * torch.sqrt(m2 * (n / (n - 1)))


def safe_normalize_spec(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same as ``normalize_spec`` (mean/std over channels, frequency and time), overflow-safe std."""
    mean, std = safe_std(x, (1, 2, 3))
    return (x - mean) / (1e-5 + std), mean, std


def safe_normalize_wave(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same as ``normalize_wave`` (mean/std over channels and time), overflow-safe std."""
    mean, std = safe_std(xt, (1, 2))
    return (xt - mean) / (1e-5 + std), mean, std


def _normalized(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    _, r, s, m2 = scaled_deviation(x, dims)
    t = math.sqrt(eps) / s
    return r * torch.rsqrt(m2 + t * t)


class SafeGroupNorm(nn.Module):
    """Overflow-safe ``nn.GroupNorm`` (``channels_last=True``: demucs's ``MyGroupNorm`` on ``(B, T, C)``)."""

    def __init__(self, norm: nn.GroupNorm, channels_last: bool = False) -> None:
        super().__init__()
        self.norm = norm  # a child, so weights and state_dict keys stay the original's
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.transpose(1, 2)
        n = self.norm
        B, C = x.shape[:2]
        y = _normalized(x.reshape(B, n.num_groups, -1), (2,), n.eps).reshape(x.shape)
        if n.affine:
            bshape = (1, C) + (1,) * (x.dim() - 2)
            y = y * n.weight.view(bshape) + n.bias.view(bshape)
        if self.channels_last:
            y = y.transpose(1, 2)
        return y


class SafeLayerNorm(nn.Module):
    """Overflow-safe ``nn.LayerNorm``."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm
        dims = tuple(range(x.dim() - len(n.normalized_shape), x.dim()))
        y = _normalized(x, dims, n.eps)
        if n.weight is not None:
            y = y * n.weight
        if n.bias is not None:
            y = y + n.bias
        return y


def _safe_replacement(name: str, mod: nn.Module) -> nn.Module | None:
    from demucs.transformer import MyGroupNorm

    if isinstance(mod, MyGroupNorm):
        return SafeGroupNorm(mod, channels_last=True)
    if isinstance(mod, nn.GroupNorm):
        return SafeGroupNorm(mod)
    if isinstance(mod, nn.LayerNorm):
        return SafeLayerNorm(mod)
    return None


def safe_norms(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A view of ``model`` with every GroupNorm/LayerNorm replaced by its safe form (weights shared)."""
    return replace_modules(model, _safe_replacement)


class SafeNormInner(FullHybridInner):
    """Both branches with overflow-safe normalization everywhere (inputs, group norms, layer norms)."""

    normalize_spec = staticmethod(safe_normalize_spec)
    normalize_wave = staticmethod(safe_normalize_wave)


class SafeNorm(FullHybrid):
    """Both branches; every GroupNorm, LayerNorm and the input std rewritten so FP16 cannot overflow in them.

    Deviations are divided by their per-group maximum before squaring; equal to the original in exact
    arithmetic, FP32 parity with ``HTDemucs.forward`` within rtol 1e-5, atol 1e-7.

    Example config::

        surgery: [full-hybrid, safe-norm]
    """

    name = "safe-norm"

    def build(self, model: nn.Module) -> InnerModel:
        self.check(model)
        view, _ = safe_norms(model)
        return SafeNormInner(view).eval()
