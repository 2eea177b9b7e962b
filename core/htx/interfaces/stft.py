"""The STFT interface: Demucs's exact STFT/iSTFT conventions, implemented by a backend."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch

from htx.interfaces.base import Plugin


class STFTBackend(Plugin):
    """STFT/iSTFT in Demucs's exact conventions (``HTDemucs._spec`` / ``_ispec``).

    With ``hop = n_fft // 4`` (1024 for the default 4096) and ``le = ceil(L / hop)``:

    ``stft(x, n_fft) -> z``: real audio ``[..., L]`` (any leading dims) to complex ``[..., n_fft // 2, le]``.

    1. Reflect-pad ``x`` by ``pad = hop // 2 * 3`` on the left and ``pad + le * hop - L`` on the right
       (when ``L`` is not longer than the pad, zero-pad first so reflection is possible, as demucs's
       ``pad1d``).
    2. ``center=True``: reflect-pad by another ``n_fft // 2`` on each side, then frame every ``hop`` samples.
    3. Each frame times the periodic Hann window, ``rfft``, scaled by ``1 / sqrt(n_fft)`` (``normalized=True``).
    4. Drop the last (Nyquist) bin, keeping ``n_fft // 2`` bins, and keep frames ``[2 : 2 + le]``. (Those are
       the frames at ``k * hop`` of the step-1 signal, so a backend may frame that directly.)

    ``istft(z, length, n_fft) -> x``: complex ``[..., n_fft // 2, le]`` back to real ``[..., length]``.

    1. Set the DC bin's imaginary part to 0 (a real signal has none; torch's CUDA inverse would use it).
    2. Append a zero Nyquist bin and two zero frames on each side (``le + 4`` frames).
    3. ``irfft`` each frame, times ``sqrt(n_fft)`` and the window, overlap-add at ``hop``, and divide by the
       overlap-added squared window, **including the windows of the four zero frames** (they add nothing
       to the signal but count in the divisor).
    4. Crop ``n_fft // 2`` (centering) plus ``pad`` samples from the left and keep ``length`` samples.

    Inputs and outputs are torch tensors (complex64 spectrogram, float32 audio); a backend may compute
    with anything inside. A backend whose spectrogram is not ``[..., n_fft // 2, ceil(L / hop)]`` fails
    the trial with an error naming the backend and the expected shape, and each trial records the
    backend's parity (max relative error) against the exact Demucs STFT on its fixture (metric
    ``stft_parity``; worse than ``targets.stft_rtol`` is marked on the leaderboard). docs/stft.md has the
    derivation; :func:`htx.api.demucs_spec` / :func:`demucs_ispec` are the reference.

    Example (a complete plugin that delegates to the reference)::

        from htx.api import STFTBackend, demucs_ispec, demucs_spec, hookimpl

        class MySTFT(STFTBackend):
            '''Delegates to the reference implementation.'''
            name = "my-stft"
            def stft(self, x, n_fft=4096):
                return demucs_spec(x, n_fft)
            def istft(self, z, length, n_fft=4096):
                return demucs_ispec(z, length, n_fft)

        @hookimpl
        def htx_register_stft_backends(register):
            register(MySTFT)
    """

    kind = "stft"
    #: True when the backend reproduces a platform library it cannot call here (results say so).
    emulated: bool = False

    def in_graph(self) -> tuple[Callable[[torch.Tensor, int], torch.Tensor], Callable[[torch.Tensor, int, int], torch.Tensor]] | None:
        """Optional: ``(stft, istft)`` in plain torch ops with no read-back from the device (no input checks,
        no data-dependent branches), same signatures and numerics as :meth:`stft` / :meth:`istft`, so that a
        compiled compute unit can trace them into one graph with the model
        (:meth:`htx.api.ComputeUnit.compile_segment`). ``None`` (default): they run outside the model's graph."""
        return None

    @abstractmethod
    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        """Real ``[..., L]`` -> complex ``[..., n_fft // 2, ceil(L / (n_fft // 4))]``."""

    @abstractmethod
    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        """Complex ``[..., n_fft // 2, T]`` -> real ``[..., length]``."""


__all__ = ["STFTBackend"]
