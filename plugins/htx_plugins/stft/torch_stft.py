"""``torch`` STFT backend: ``torch.stft``/``torch.istft`` wrapped in Demucs's padding and cropping."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from htx.contracts import Params, STFTBackend


def _pad1d_reflect(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the input is shorter than the pad (demucs ``pad1d``)."""
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = 0
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode="reflect")


def demucs_spec(x: torch.Tensor, n_fft: int = 4096, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``HTDemucs._spec``: ``[..., L]`` -> complex ``[..., n_fft // 2, ceil(L / hop)]``."""
    hop = n_fft // 4
    *other, length = x.shape
    le = int(math.ceil(length / hop))
    pad = hop // 2 * 3
    x = x.to(dtype).reshape(-1, 1, length)
    x = _pad1d_reflect(x, pad, pad + le * hop - length)[:, 0]
    z = torch.stft(
        x, n_fft, hop, window=torch.hann_window(n_fft, dtype=dtype, device=x.device), win_length=n_fft,
        normalized=True, center=True, return_complex=True, pad_mode="reflect",
    )
    z = z[..., :-1, 2: 2 + le]
    return z.reshape(*other, z.shape[-2], z.shape[-1])


def demucs_ispec(z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
    """``HTDemucs._ispec``: complex ``[..., n_fft // 2, T]`` -> ``[..., length]``."""
    hop = n_fft // 4
    *other, freqs, frames = z.shape
    z = z.reshape(-1, freqs, frames)
    # A real signal's DC bin is real. The network's output is not, and torch's inverse FFT treats the
    # imaginary part differently per device: the CPU ignores it, CUDA (on this padded, strided input) does
    # not, so HTDemucs's own output differs between CPU and CUDA (31.5 dB SNR on the trained demo model).
    # Dropping it here gives the CPU's result on every device.
    z = torch.cat([z[:, :1].real.to(z.dtype), z[:, 1:]], dim=1)
    z = F.pad(z, (0, 0, 0, 1))
    z = F.pad(z, (2, 2))
    pad = hop // 2 * 3
    le = hop * int(math.ceil(length / hop)) + 2 * pad
    real_dtype = z.real.dtype
    x = torch.istft(
        z, n_fft, hop, window=torch.hann_window(n_fft, dtype=real_dtype, device=z.device), win_length=n_fft,
        normalized=True, length=le, center=True,
    )
    x = x[..., pad: pad + length]
    return x.reshape(*other, length)


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
