"""Input checks shared by the STFT backends."""

from __future__ import annotations

import numpy as np
import torch

from htx.errors import AudioError


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
