"""``external-norm``: the input normalization and the final de-normalization run on the host in FP32.

HTDemucs normalizes both inputs by their mean and standard deviation over a whole segment and undoes it
on the outputs. Those whole-segment reductions are where FP16 overflows first (a sum of squares over
millions of spectrogram bins), so this surgery takes them out of the converted model: ``host_pre`` computes
the statistics in FP32 and hands the model normalized inputs; ``host_post`` scales the outputs back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from htx.api import InnerModel
from htx_plugins.surgery.full_hybrid import FullHybrid, normalize_spec, normalize_wave, run_branches


class ExternalNormInner(InnerModel):
    """``(spec_norm [B, 2C, F, T], mix_norm [B, C, L]) -> (spec_out_norm [B, S, 2C, F, T], wave_out_norm [B, S, C, L])``.

    The model sees normalized inputs only and returns normalized outputs; ``host_pre``/``host_post``
    hold the statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_sources = len(model.sources)

    def host_pre(self, spec_cac: torch.Tensor, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        x, mean, std = normalize_spec(spec_cac.float())
        xt, meant, stdt = normalize_wave(mix.float())
        return (x, xt), (mean, std, meant, stdt)

    def forward(self, spec_norm: torch.Tensor, mix_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, Fq, T = spec_norm.shape
        length = mix_norm.shape[-1]
        x, xt = run_branches(self.model, spec_norm, mix_norm)
        return x.view(B, self.num_sources, -1, Fq, T), xt.view(B, self.num_sources, -1, length)

    def host_post(self, outputs: tuple[torch.Tensor, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std, meant, stdt = ctx
        spec_n, wave_n = outputs
        spec_out = spec_n.to(std.device, torch.float32) * std[:, None] + mean[:, None]
        wave_out = wave_n.to(stdt.device, torch.float32) * stdt[:, None] + meant[:, None]
        return spec_out, wave_out


class ExternalNorm(FullHybrid):
    """Both branches; mean/std normalization of the inputs and de-normalization of the outputs on the host (FP32).

    The converted model has no whole-segment reductions at its inputs or outputs. Same arithmetic as
    ``full-hybrid`` in the same order, so it reproduces ``HTDemucs.forward`` in FP32.

    Example config::

        surgery: [full-hybrid, external-norm]
    """

    name = "external-norm"

    def build(self, model: nn.Module) -> InnerModel:
        self.check(model)
        return ExternalNormInner(model).eval()
