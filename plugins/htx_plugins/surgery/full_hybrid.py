"""``full-hybrid``: both branches of HTDemucs with the input normalization inside (as the original forward)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from htx.api import InnerModel, Surgery


def normalize_spec(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (1e-5 + std), mean, std


def normalize_wave(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    meant = xt.mean(dim=(1, 2), keepdim=True)
    stdt = xt.std(dim=(1, 2), keepdim=True)
    return (xt - meant) / (1e-5 + stdt), meant, stdt


def run_branches(m: nn.Module, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoders, cross-transformer and decoders of ``HTDemucs.forward`` on normalized inputs.

    Mirrors demucs 4.1.0 ``HTDemucs.forward`` between the normalization and the de-normalization.
    """
    saved, saved_t, lengths, lengths_t = [], [], [], []
    for idx, encode in enumerate(m.encoder):
        lengths.append(x.shape[-1])
        inject = None
        if idx < len(m.tencoder):
            lengths_t.append(xt.shape[-1])
            tenc = m.tencoder[idx]
            xt = tenc(xt)
            if not tenc.empty:
                saved_t.append(xt)
            else:
                inject = xt
        x = encode(x, inject)
        if idx == 0 and m.freq_emb is not None:
            frs = torch.arange(x.shape[-2], device=x.device)
            emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
            x = x + m.freq_emb_scale * emb
        saved.append(x)
    if m.crosstransformer:
        if m.bottom_channels:
            f = x.shape[2]
            x = rearrange(x, "b c f t-> b c (f t)")
            x = m.channel_upsampler(x)
            x = rearrange(x, "b c (f t)-> b c f t", f=f)
            xt = m.channel_upsampler_t(xt)
        x, xt = m.crosstransformer(x, xt)
        if m.bottom_channels:
            x = rearrange(x, "b c f t-> b c (f t)")
            x = m.channel_downsampler(x)
            x = rearrange(x, "b c (f t)-> b c f t", f=f)
            xt = m.channel_downsampler_t(xt)
    for idx, decode in enumerate(m.decoder):
        skip = saved.pop(-1)
        x, pre = decode(x, skip, lengths.pop(-1))
        offset = m.depth - len(m.tdecoder)
        if idx >= offset:
            tdec = m.tdecoder[idx - offset]
            length_t = lengths_t.pop(-1)
            if tdec.empty:
                pre = pre[:, :, 0]
                xt, _ = tdec(pre, None, length_t)
            else:
                skip = saved_t.pop(-1)
                xt, _ = tdec(xt, skip, length_t)
    return x, xt


class FullHybridInner(InnerModel):
    """``(spec_cac [B, 2C, F, T], mix [B, C, L]) -> (spec_out [B, S, 2C, F, T], wave_out [B, S, C, L])``."""

    #: The input normalization (a surgery may swap in an equivalent formulation).
    normalize_spec = staticmethod(normalize_spec)
    normalize_wave = staticmethod(normalize_wave)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_sources = len(model.sources)

    def forward(self, spec_cac: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, Fq, T = spec_cac.shape
        S = self.num_sources
        length = mix.shape[-1]
        x, mean, std = self.normalize_spec(spec_cac)
        xt, meant, stdt = self.normalize_wave(mix)
        x, xt = run_branches(self.model, x, xt)
        spec_out = x.view(B, S, -1, Fq, T) * std[:, None] + mean[:, None]
        wave_out = xt.view(B, S, -1, length) * stdt[:, None] + meant[:, None]
        return spec_out, wave_out


class FullHybrid(Surgery):
    """Both branches, normalization inside: the original ``HTDemucs.forward`` minus STFT/iSTFT.

    With a host-side STFT and iSTFT it reproduces ``HTDemucs.forward`` (rtol 1e-5, atol 1e-7 in FP32).

    Example config::

        surgery: [full-hybrid]
    """

    name = "full-hybrid"

    def check(self, model: nn.Module) -> None:
        super().check(model)
        from htx.api import ModelError

        if not model.cac or model.wiener_iters:
            raise ModelError(f"{self.name} needs an HTDemucs with cac=True and wiener_iters=0 (the released configs)")

    def build(self, model: nn.Module) -> InnerModel:
        self.check(model)
        return FullHybridInner(model).eval()
