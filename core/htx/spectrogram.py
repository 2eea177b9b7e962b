"""Demucs's spectrogram convention, exactly: the reference every STFT backend is held to.

:func:`demucs_spec` and :func:`demucs_ispec` are ``HTDemucs._spec`` and ``HTDemucs._ispec`` (demucs
4.1.0), with the DC bin's imaginary part dropped before the inverse (see :class:`htx.api.STFTBackend`
for the full contract). The core uses them for example inputs and for each trial's STFT parity; plugins
reach them through :mod:`htx.api`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def hop_length(n_fft: int) -> int:
    return n_fft // 4


def spec_shape(length: int, n_fft: int) -> tuple[int, int]:
    """``(bins, frames)`` of the Demucs spectrogram of ``length`` samples: ``(n_fft // 2, ceil(length / hop))``."""
    return n_fft // 2, int(math.ceil(length / hop_length(n_fft)))


def pad1d_reflect(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the input is shorter than the pad (demucs ``pad1d``)."""
    length = x.shape[-1]
    max_pad = max(left, right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = F.pad(x, (extra_left, extra_right))
    return F.pad(x, (left, right), mode="reflect")


def demucs_spec(x: torch.Tensor, n_fft: int = 4096, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``HTDemucs._spec``: ``[..., L]`` -> complex ``[..., n_fft // 2, ceil(L / hop)]``."""
    hop = hop_length(n_fft)
    *other, length = x.shape
    le = int(math.ceil(length / hop))
    pad = hop // 2 * 3
    x = x.to(dtype).reshape(-1, 1, length)
    x = pad1d_reflect(x, pad, pad + le * hop - length)[:, 0]
    z = torch.stft(
        x, n_fft, hop, window=torch.hann_window(n_fft, dtype=dtype, device=x.device), win_length=n_fft,
        normalized=True, center=True, return_complex=True, pad_mode="reflect",
    )
    z = z[..., :-1, 2: 2 + le]
    return z.reshape(*other, z.shape[-2], z.shape[-1])


def istft_fold(z: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """``torch.istft(z, n_fft, hop, window=hann, normalized=True, center=True, length=length)`` for complex
    ``[N, n_fft // 2 + 1, T]`` without its data-dependent checks (the window-envelope test reads a value back
    from the device), so that it traces into a graph: inverse real FFT, window, overlap-add (``fold``), divided
    by the summed squared window. Matches ``torch.istft`` to float rounding."""
    return _irfft_overlap_add(z.transpose(1, 2), n_fft, hop, length)


def _irfft_overlap_add(frames_major: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """:func:`istft_fold` of complex ``[N, T, n_fft // 2 + 1]`` (frames first: the layout the inverse FFT reads
    without a copy when it is contiguous)."""
    frames = frames_major.shape[1]
    window = torch.hann_window(n_fft, dtype=frames_major.real.dtype, device=frames_major.device)
    y = torch.fft.irfft(frames_major, n=n_fft, dim=-1, norm="ortho") * window  # [N, T, n_fft]
    out_len = (frames - 1) * hop + n_fft

    def overlap_add(x: torch.Tensor) -> torch.Tensor:  # [M, T, n_fft] -> [M, out_len]
        return F.fold(x.transpose(1, 2), (1, out_len), (1, n_fft), stride=(1, hop)).reshape(x.shape[0], out_len)

    envelope = overlap_add(window.pow(2).expand(1, frames, n_fft))
    start = n_fft // 2
    return overlap_add(y)[:, start: start + length] / envelope[:, start: start + length]


def _ispec_frames(z: torch.Tensor) -> torch.Tensor:
    """What ``HTDemucs._ispec`` hands the inverse STFT, from complex ``[N, F, T]``: the DC bin's imaginary part
    dropped, a zero Nyquist bin and two zero frames on each side appended, laid out frames first
    (``[N, T + 4, F + 1]``, contiguous). Built on the real view, so a compiled graph writes it in one fused
    kernel: complex tensors are ATen's, and the complex ``cat``, two pads and the strided inverse-FFT input the
    plain path takes were one full copy each of the four stems' spectrograms on the GPU."""
    freqs = z.shape[1]
    r = torch.view_as_real(z).transpose(1, 2)  # [N, T, F, 2]
    is_dc_imag = torch.arange(2 * freqs, device=z.device).reshape(freqs, 2) == 1
    r = torch.where(is_dc_imag, torch.zeros((), dtype=r.dtype, device=r.device), r)
    return torch.view_as_complex(F.pad(r, (0, 0, 0, 1, 2, 2)).contiguous())


def ispec_padded(z: torch.Tensor) -> torch.Tensor:
    """What ``HTDemucs._ispec`` hands ``torch.istft``, from complex ``[N, F, T]``: the DC bin's imaginary part
    dropped, a zero Nyquist bin and two zero frames on each side appended (complex ``[N, F + 1, T + 4]``).
    :func:`_ispec_frames` is the same spectrogram, frames first, built on the real view."""
    # A real signal's DC bin is real. The network's output is not, and torch's inverse FFT treats the
    # imaginary part differently per device: the CPU ignores it, CUDA (on this padded, strided input) does
    # not, so HTDemucs's own output differs between CPU and CUDA (31.5 dB SNR on the trained demo model).
    # Dropping it here gives the CPU's result on every device.
    z = torch.cat([z[:, :1].real.to(z.dtype), z[:, 1:]], dim=1)
    return F.pad(F.pad(z, (0, 0, 0, 1)), (2, 2))


def demucs_ispec(z: torch.Tensor, length: int, n_fft: int = 4096, traceable: bool = False) -> torch.Tensor:
    """``HTDemucs._ispec``: complex ``[..., n_fft // 2, T]`` -> ``[..., length]``. ``traceable``: the inverse
    is :func:`istft_fold` (no device read-back, so a compiled graph can hold it) instead of ``torch.istft``,
    on a spectrogram padded in the layout it reads (:func:`_ispec_frames`)."""
    hop = hop_length(n_fft)
    *other, freqs, frames = z.shape
    z = z.reshape(-1, freqs, frames)
    pad = hop // 2 * 3
    le = hop * int(math.ceil(length / hop)) + 2 * pad
    if traceable:
        return _irfft_overlap_add(_ispec_frames(z), n_fft, hop, le)[..., pad: pad + length].reshape(*other, length)
    z = ispec_padded(z)
    real_dtype = z.real.dtype
    x = torch.istft(
        z, n_fft, hop, window=torch.hann_window(n_fft, dtype=real_dtype, device=z.device), win_length=n_fft,
        normalized=True, length=le, center=True,
    )
    x = x[..., pad: pad + length]
    return x.reshape(*other, length)


def spec_to_cac(z: torch.Tensor) -> torch.Tensor:
    """Complex ``[B, C, F, T]`` -> float ``[B, 2C, F, T]`` (real/imag interleaved per channel, as demucs)."""
    B, C, Fr, T = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(B, C * 2, Fr, T)


def cac_to_spec(m: torch.Tensor) -> torch.Tensor:
    """Float ``[B, S, 2C, F, T]`` -> complex ``[B, S, C, F, T]`` (the inverse of :func:`spec_to_cac`)."""
    B, S, C2, Fr, T = m.shape
    out = m.reshape(B, S, C2 // 2, 2, Fr, T).permute(0, 1, 2, 4, 5, 3)
    return torch.view_as_complex(out.float().contiguous())


def max_relative_error(z: torch.Tensor, golden: torch.Tensor) -> float:
    """``max |z - golden| / max |golden|`` (0 when both are zero): an STFT backend's parity."""
    z64 = z.detach().cpu().to(torch.complex128)
    g64 = golden.detach().cpu().to(torch.complex128)
    scale = float(g64.abs().max()) if g64.numel() else 0.0
    err = float((z64 - g64).abs().max()) if g64.numel() else 0.0
    if scale == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / scale
