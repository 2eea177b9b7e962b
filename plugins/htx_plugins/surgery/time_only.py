"""``time-only``: the time-domain branch of HTDemucs alone, a fast preview with no STFT at all.

Only the waveform path is computed: time encoders, the time side of the cross-transformer, time decoders.
The frequency encoder/decoder and the spectrogram side of the cross-transformer are never called, and the
pipeline skips the STFT and the iSTFT (``needs_stft = False``). The output is the time branch's estimate
only, so accuracy drops against the hybrid reference: the leaderboard's SNR is the price of the preview.

The cross-attention layers of the time side attend to the spectrogram stream, which does not exist here.
``cross`` says what they become:

- ``ffn`` (default): the cross-attention term is dropped; the layer's feed-forward block (and its output
  norm) still runs on the time stream;
- ``self``: the layer attends to the time stream itself (its cross-attention weights used as self-attention);
- ``skip``: the whole layer is skipped.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import nn

from htx.api import InnerModel, ModelError, Params, Surgery
from htx_plugins.surgery.full_hybrid import normalize_wave


def _cross_layer_time_only(layer: nn.Module, xt: torch.Tensor, cross: str) -> torch.Tensor:
    """A time-side ``CrossTransformerEncoderLayer`` without its spectrogram keys."""
    if cross == "skip":
        return xt
    if cross == "self":
        return layer(xt, xt)
    if layer.norm_first:
        x = xt + layer.gamma_2(layer._ff_block(layer.norm3(xt)))
        if layer.norm_out:
            x = layer.norm_out(x)
        return x
    x = layer.norm1(xt)
    return layer.norm2(x + layer.gamma_2(layer._ff_block(x)))


def time_transformer(ct: nn.Module, xt: torch.Tensor, cross: str) -> torch.Tensor:
    """The time half of ``CrossTransformerEncoder.forward`` (demucs 4.1.0) on ``xt [B, C, T]``."""
    B, C, T2 = xt.shape
    xt = rearrange(xt, "b c t2 -> b t2 c")
    pos_emb = rearrange(ct._get_pos_embedding(T2, B, C, xt.device), "t2 b c -> b t2 c")
    xt = ct.norm_in_t(xt)
    xt = xt + ct.weight_pos_embed * pos_emb
    for idx in range(ct.num_layers):
        layer = ct.layers_t[idx]
        if idx % 2 == ct.classic_parity:
            xt = layer(xt)
        else:
            xt = _cross_layer_time_only(layer, xt, cross)
    return rearrange(xt, "b t2 c -> b c t2")


class TimeOnlyInner(InnerModel):
    """``mix [B, C, L] -> (wave_out [B, S, C, L],)``; ``host_post`` returns ``(None, wave_out)`` (no iSTFT)."""

    def __init__(self, model: nn.Module, cross: str = "ffn") -> None:
        super().__init__()
        self.model = model
        self.cross = cross
        self.num_sources = len(model.sources)

    def host_pre(self, spec_cac: torch.Tensor | None, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        return (mix,), None

    def forward(self, mix: torch.Tensor) -> tuple[torch.Tensor]:
        m = self.model
        B, _, length = mix.shape
        xt, meant, stdt = normalize_wave(mix)
        saved_t, lengths_t = [], []
        for tenc in m.tencoder:
            lengths_t.append(xt.shape[-1])
            xt = tenc(xt)
            saved_t.append(xt)
        if m.crosstransformer:
            if m.bottom_channels:
                xt = m.channel_upsampler_t(xt)
            xt = time_transformer(m.crosstransformer, xt, self.cross)
            if m.bottom_channels:
                xt = m.channel_downsampler_t(xt)
        for tdec in m.tdecoder:
            xt, _ = tdec(xt, saved_t.pop(-1), lengths_t.pop(-1))
        return (xt.view(B, self.num_sources, -1, length) * stdt[:, None] + meant[:, None],)

    def host_post(self, outputs: tuple[torch.Tensor, ...], ctx: Any) -> tuple[None, torch.Tensor]:
        (wave_out,) = outputs
        return None, wave_out


class TimeOnlyParams(Params):
    cross: Literal["ffn", "self", "skip"] = Field(
        "ffn", description="what the time side's cross-attention layers become without the spectrogram stream"
    )


class TimeOnly(Surgery):
    """The time-domain branch alone: a fast preview, no STFT, no frequency branch (accuracy loss expected).

    The frequency encoder/decoder and the spectrogram half of the cross-transformer are not computed; the
    output is the time branch's estimate alone. Needs an HTDemucs whose time branch never merges into the
    frequency branch (every time encoder layer non-empty: depth <= 4 with nfft 4096).

    Example config::

        surgery:
          - time-only                  # cross-attention layers keep their feed-forward block
          - time-only: {cross: self}   # or attend to the time stream itself
    """

    name = "time-only"
    Params = TimeOnlyParams
    needs_stft = False

    def check(self, model: nn.Module) -> None:
        super().check(model)
        if any(t.empty for t in model.tencoder) or len(model.tencoder) != len(model.encoder):
            raise ModelError(
                f"surgery {self.name!r}: this HTDemucs merges its time branch into the frequency branch "
                f"(depth {model.depth} with nfft {model.nfft}), so the time branch cannot run alone; "
                "use a model with every layer split (depth <= 4 for nfft 4096)"
            )
        if len(model.tdecoder) != len(model.tencoder):
            raise ModelError(f"surgery {self.name!r}: time encoder and decoder depths differ ({len(model.tencoder)} vs {len(model.tdecoder)})")

    def build(self, model: nn.Module) -> InnerModel:
        self.check(model)
        return TimeOnlyInner(model, self.params.cross).eval()
