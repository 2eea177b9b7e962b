"""Input checks and boundary conversions shared by the STFT backends.

Accepted shapes (the :class:`htx.api.STFTBackend` contract):

- ``stft(x)``: real floating audio ``[..., L]`` with ``L > 0`` and at least one dimension; any leading
  dimensions (``[L]``, ``[C, L]``, ``[B, C, L]``, ...) are kept. NaN/Inf samples are rejected.
- ``istft(z, length)``: a complex spectrogram ``[..., n_fft // 2, T]`` with ``T == ceil(length / hop)``
  (what ``stft`` of ``length`` samples returns). Non-finite values are passed through, not rejected: a
  model run in FP16 may overflow, and the runner counts NaN/Inf in the output instead of failing the trial.

The numpy-level core functions of the ``numpy`` and ``vdsp`` backends take exactly 2-D ``[rows, samples]``
(and ``[rows, F, T]``); the plugins fold leading dimensions into rows with :func:`to_rows`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from htx.api import AudioError


def check_signal(x: torch.Tensor | np.ndarray) -> None:
    """Reject empty, non-floating or non-finite input with a message that says what to pass instead."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise AudioError(f"STFT input must be a torch tensor or numpy array, got {type(x).__name__}")
    is_float = x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
    if not is_float:
        raise AudioError(f"STFT input must be floating point audio, got dtype {x.dtype}; convert with .float()")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise AudioError(f"STFT input is empty (shape {tuple(x.shape)}); pass audio shaped [..., samples] with samples > 0")
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not bool(finite):
        raise AudioError("STFT input has NaN or Inf samples; clean the audio first")


def check_spectrogram(z: torch.Tensor | np.ndarray, length: int, n_fft: int) -> None:
    """Reject what ``istft`` cannot invert: real input, a wrong bin count, a length that does not match ``T``."""
    if not isinstance(z, (torch.Tensor, np.ndarray)):
        raise AudioError(f"iSTFT input must be a torch tensor or numpy array, got {type(z).__name__}")
    is_complex = z.is_complex() if isinstance(z, torch.Tensor) else np.iscomplexobj(z)
    freqs = n_fft // 2
    if not is_complex:
        raise AudioError(
            f"iSTFT input must be a complex spectrogram [..., {freqs}, frames], got dtype {z.dtype} shape "
            f"{tuple(z.shape)}; complex-as-channels model output converts with htx.pipeline.cac_to_spec"
        )
    if z.ndim < 2 or z.shape[-2] != freqs:
        raise AudioError(
            f"iSTFT input must be shaped [..., {freqs}, frames] for n_fft={n_fft} (Demucs drops the Nyquist bin), "
            f"got {tuple(z.shape)}"
        )
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
        raise AudioError(f"iSTFT length must be a positive number of samples, got {length!r}")
    hop = n_fft // 4
    frames = int(math.ceil(length / hop))
    if z.shape[-1] != frames:
        raise AudioError(
            f"iSTFT of {length} samples needs ceil({length} / {hop}) = {frames} frames, got {z.shape[-1]}; "
            "pass the length the spectrogram was computed from"
        )


def to_rows(x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Audio ``[..., L]`` as numpy rows ``[N, L]`` (float32 or float64, no copy when possible) and the leading shape."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # float16/bfloat16 have no (or no exact) numpy counterpart
        x = x.cpu().numpy()
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, x.shape[-1]), lead


def spec_to_rows(z: torch.Tensor | np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Spectrogram ``[..., F, T]`` as numpy rows ``[N, F, T]`` (complex64/128) and the leading shape."""
    if isinstance(z, torch.Tensor):
        z = z.detach()
        if z.dtype not in (torch.complex64, torch.complex128):
            z = z.to(torch.complex64)
        z = z.cpu().resolve_conj().numpy()
    lead = tuple(z.shape[:-2])
    return z.reshape(-1, *z.shape[-2:]), lead
