"""``torch`` STFT backend: ``torch.stft``/``torch.istft`` wrapped in Demucs's padding and cropping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from htx.api import Params, STFTBackend, demucs_ispec, demucs_spec

__all__ = ["TorchSTFT", "demucs_ispec", "demucs_spec", "plain_istft", "plain_stft"]


def plain_stft(x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
    """``torch.stft`` without Demucs's cropping (``center=True``, every bin and frame): ``[N, L]`` -> ``[N, F, T]``."""
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    return torch.stft(x, n_fft, n_fft // 4, window=window, win_length=n_fft, normalized=True, center=True,
                      return_complex=True, pad_mode="reflect")


def plain_istft(z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
    """The inverse of :func:`plain_stft`: ``[N, F, T]`` -> ``[N, length]``."""
    window = torch.hann_window(n_fft, dtype=z.real.dtype, device=z.device)
    return torch.istft(z, n_fft, n_fft // 4, window=window, win_length=n_fft, normalized=True, center=True, length=length)


class TorchSTFTParams(Params):
    dtype: Literal["float32", "float64"] = "float32"


class TorchSTFT(STFTBackend):
    """torch.stft/istft in Demucs conventions (the model's own STFT).

    Example config::

        stft: [torch, {torch: {dtype: float64}}]
    """

    name = "torch"
    Params = TorchSTFTParams

    def in_graph(self) -> tuple[Callable[[torch.Tensor, int], torch.Tensor], Callable[[torch.Tensor, int, int], torch.Tensor]]:
        """The same STFT without the input checks, and the iSTFT as an explicit overlap-add (``torch.istft``
        reads its window envelope back from the device): traceable into a compiled graph."""
        real = getattr(torch, self.params.dtype)
        cplx = torch.complex128 if self.params.dtype == "float64" else torch.complex64

        def stft(x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
            return demucs_spec(x, n_fft, real).to(torch.complex64)

        def istft(z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
            return demucs_ispec(z.to(cplx), length, n_fft, traceable=True).to(torch.float32)

        return stft, istft

    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_signal

        check_signal(x)
        z = demucs_spec(x, n_fft, getattr(torch, self.params.dtype))
        return z.to(torch.complex64)

    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_spectrogram

        check_spectrogram(z, length, n_fft)
        dt = torch.complex128 if self.params.dtype == "float64" else torch.complex64
        return demucs_ispec(z.to(dt), length, n_fft).to(torch.float32)
