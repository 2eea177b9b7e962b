"""One segment through the trial pipeline: STFT -> complex-as-channels -> inner model -> iSTFT.

The pipeline times its three stages separately so the runner can report STFT, model and iSTFT
latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from htx.contracts import InnerModel, STFTBackend


def spec_to_cac(z: torch.Tensor) -> torch.Tensor:
    """Complex ``[B, C, F, T]`` -> float ``[B, 2C, F, T]`` (real/imag interleaved per channel, as demucs)."""
    B, C, Fr, T = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(B, C * 2, Fr, T)


def cac_to_spec(m: torch.Tensor) -> torch.Tensor:
    """Float ``[B, S, 2C, F, T]`` -> complex ``[B, S, C, F, T]`` (the inverse of :func:`spec_to_cac`)."""
    B, S, C2, Fr, T = m.shape
    out = m.reshape(B, S, C2 // 2, 2, Fr, T).permute(0, 1, 2, 4, 5, 3)
    return torch.view_as_complex(out.float().contiguous())


@dataclass
class StageTimes:
    stft: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    istft: list[float] = field(default_factory=list)


class Pipeline:
    """Callable ``[B, C, L] -> [B, S, C, L]`` for segments of the model's length."""

    def __init__(
        self,
        inner: InnerModel,
        forward: Callable[..., Any],
        stft: STFTBackend | None,
        n_fft: int,
        device: torch.device,
        sync: Callable[[], None] = lambda: None,
        needs_stft: bool = True,
    ) -> None:
        self.inner = inner
        self.forward = forward
        self.stft = stft
        self.n_fft = n_fft
        self.device = device
        self.sync = sync
        self.needs_stft = needs_stft
        self.times = StageTimes()

    def _timed(self, bucket: list[float], fn: Callable[[], Any]) -> Any:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        bucket.append(time.perf_counter() - t0)
        return out

    def model_inputs(self, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        mix = mix.to(self.device, torch.float32)
        spec_cac = None
        if self.needs_stft:
            z = self._timed(self.times.stft, lambda: self.stft.stft(mix, self.n_fft))
            spec_cac = spec_to_cac(z.to(self.device))
        return self.inner.host_pre(spec_cac, mix)

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        args, ctx = self.model_inputs(mix)
        with torch.no_grad():
            outs = self._timed(self.times.model, lambda: self.forward(*args))
        spec_out, wave_out = self.inner.host_post(tuple(outs), ctx)
        wave_out = wave_out.float()
        if spec_out is None:
            return wave_out
        zout = cac_to_spec(spec_out.float())
        x = self._timed(self.times.istft, lambda: self.stft.istft(zout, length, self.n_fft))
        return wave_out + x.to(wave_out.device)
