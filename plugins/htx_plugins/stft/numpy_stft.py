"""``numpy`` STFT backend: ``numpy.fft.rfft``/``irfft`` with explicit framing, window, scaling and overlap-add.

No torch inside the algorithm: the core functions take and return numpy arrays shaped ``[N, L]`` (rows of
audio) and ``[N, F, T]`` (rows of spectrograms); the plugin class converts torch tensors at the boundary and
folds any leading dimensions into ``N``. The framing, padding and overlap-add helpers here are shared with the
``vdsp`` backend, which differs only in its FFT kernel and its packed layout.

Conventions reproduced (torch ``stft``/``istft`` with ``normalized=True, center=True``, periodic Hann window,
as wrapped by ``HTDemucs._spec``/``_ispec``):

- forward: every frame is multiplied by the window and by ``1 / sqrt(n_fft)`` before the real FFT
  (``normalized=True`` is the "ortho" scaling);
- inverse: every frame is inverse-transformed, multiplied by the window and by ``sqrt(n_fft)``, overlap-added,
  and divided by the overlap-added squared window (the window-square normalization of ``torch.istft``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from htx.api import AudioError, Params, STFTBackend

#: Frames processed per FFT call in the forward pass: small enough that the windowed block stays in cache.
_BLOCK_FRAMES = 64


def hop_of(n_fft: int) -> int:
    """Demucs's hop: a quarter of the FFT size."""
    return n_fft // 4


def check_n_fft(n_fft: int) -> None:
    """``n_fft`` must be a power of two >= 8 (Demucs uses 4096; the hop ``n_fft // 4`` must be even)."""
    if not isinstance(n_fft, (int, np.integer)) or n_fft < 8 or n_fft & (n_fft - 1):
        raise AudioError(f"n_fft must be a power of two >= 8 (Demucs uses 4096), got {n_fft!r}")


def check_rows(x: np.ndarray, what: str = "audio") -> None:
    """The core functions take real ``[N, L]`` rows only; the plugin reshapes ``[..., L]`` before calling them."""
    if not isinstance(x, np.ndarray):
        raise AudioError(f"{what} must be a numpy array shaped [rows, samples], got {type(x).__name__}")
    if x.ndim != 2:
        raise AudioError(
            f"{what} must be 2-D [rows, samples], got shape {x.shape}; fold leading dimensions first "
            "(x.reshape(-1, x.shape[-1])), or call the plugin, which accepts [..., samples]"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{what} must be floating point, got dtype {x.dtype}; convert with .astype(np.float32)")
    if x.shape[-1] == 0:
        raise AudioError(f"{what} is empty (shape {x.shape}); pass at least one sample per row")


def hann_periodic(n_fft: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Periodic Hann window ``0.5 - 0.5 cos(2 pi n / n_fft)`` (``torch.hann_window(n_fft)``), computed in float64."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(dtype)


def reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Reflect padding of ``[N, L]`` that also works when ``L`` is shorter than the pad (demucs ``pad1d``).

    demucs zero-pads first so that reflection is defined (``torch`` refuses pads >= the input length).
    """
    length = x.shape[-1]
    max_pad = max(left, right)
    if length <= max_pad:
        extra = max_pad - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        left, right = left - extra_left, right - extra_right
        x = np.pad(x, ((0, 0), (extra_left, extra_right)))
    return np.pad(x, ((0, 0), (left, right)), mode="reflect")


def frames_view(xp: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Strided view ``[N, T, n_fft]`` of the frames of ``[N, Lp]`` (no copy)."""
    return sliding_window_view(xp, n_fft, axis=-1)[:, ::hop]


def rfft_frames(frames: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``rfft(frames * window)`` over the last axis, block by block so the windowed copy stays in cache."""
    rows, count, n_fft = frames.shape
    dtype = window.dtype
    out = np.empty((rows, count, n_fft // 2 + 1), dtype=np.result_type(dtype, np.complex64))
    block = np.empty((rows, min(_BLOCK_FRAMES, count), n_fft), dtype=dtype)
    for start in range(0, count, _BLOCK_FRAMES):
        stop = min(count, start + _BLOCK_FRAMES)
        b = block[:, : stop - start]
        np.multiply(frames[:, start:stop], window, out=b)
        out[:, start:stop] = np.fft.rfft(b, axis=-1)
    return out


def overlap_add(frames: np.ndarray, hop: int, first: int, total: int) -> np.ndarray:
    """Sum frames ``[N, T, n_fft]`` placed at ``(first + k) * hop`` into a buffer of ``total`` frame slots.

    Returns ``[N, (total - 1) * hop + n_fft]``. Because ``n_fft`` is a multiple of ``hop``, the sum is
    ``n_fft // hop`` vectorized block additions instead of a loop over frames.
    """
    rows, count, n_fft = frames.shape
    r = n_fft // hop
    buf = np.zeros((rows, total + r - 1, hop), dtype=frames.dtype)
    blocks = frames.reshape(rows, count, r, hop)
    for j in range(r):
        buf[:, first + j: first + j + count] += blocks[:, :, j]
    return buf.reshape(rows, -1)


def irfft_overlap_add(z: np.ndarray, n_fft: int, synthesis: np.ndarray, first: int, total: int) -> np.ndarray:
    """``irfft`` of bins ``[N, F, T]`` (any strides, ``F`` = ``n_fft // 2`` or ``+ 1``), times ``synthesis``,
    overlap-added at ``(first + k) * hop`` into ``total`` slots: ``[N, (total - 1) * hop + n_fft]``.

    Works block by block (``_BLOCK_FRAMES`` frames): the transposed bins, the time frames and the part of
    the output they touch stay in cache instead of making three passes over the whole spectrogram.
    """
    rows, freqs, count = z.shape
    hop = hop_of(n_fft)
    r = n_fft // hop
    dtype = synthesis.dtype
    buf = np.zeros((rows, total + r - 1, hop), dtype=dtype)
    bins = np.zeros((min(_BLOCK_FRAMES, count), n_fft // 2 + 1), dtype=np.result_type(dtype, np.complex64))
    for row in range(rows):
        for start in range(0, count, _BLOCK_FRAMES):
            stop = min(count, start + _BLOCK_FRAMES)
            b = bins[: stop - start]
            b[:, :freqs] = z[row, :, start:stop].T  # a missing Nyquist bin stays 0
            frames = np.fft.irfft(b, n=n_fft, axis=-1)
            frames *= synthesis
            blocks = frames.reshape(stop - start, r, hop)
            for j in range(r):
                buf[row, first + start + j: first + stop + j] += blocks[:, j]
    return buf.reshape(rows, -1)


def window_envelope(window: np.ndarray, hop: int, total: int) -> np.ndarray:
    """Overlap-added squared window over ``total`` frames: ``[(total - 1) * hop + n_fft]``.

    Inside, every block sees all ``n_fft // hop`` window pieces; only the first and last ``r - 1`` blocks
    differ, so this costs O(n_fft) instead of O(total * n_fft).
    """
    n_fft = window.shape[0]
    r = n_fft // hop
    pieces = np.square(window.astype(np.float64)).reshape(r, hop)
    env = np.empty((total + r - 1, hop), dtype=np.float64)
    env[:] = pieces.sum(axis=0)
    # block b holds piece j of frame b - j, for the j with 0 <= b - j < total
    for b in {*range(min(r - 1, total + r - 1)), *range(max(r - 1, total), total + r - 1)}:
        env[b] = pieces[max(0, b - total + 1): min(r, b + 1)].sum(axis=0)
    return env.reshape(-1).astype(window.dtype)


def normalize_ola(y: np.ndarray, env: np.ndarray, start: int, length: int) -> np.ndarray:
    """``y[:, start:start+length] / env[start:start+length]`` (torch ``istft``'s window-square normalization)."""
    env_part = env[start: start + length]
    if env_part.size and float(env_part.min()) <= 1e-11:
        raise AudioError("window overlap-add is ~0 in the requested range: the window and hop do not overlap")
    return y[:, start: start + length] / env_part


# --------------------------------------------------------------------------------------------------
# plain STFT (no Demucs cropping): center=True reflect padding, every bin and every frame


def plain_stft(x: np.ndarray, n_fft: int = 4096, dtype: type = np.float32) -> np.ndarray:
    """``torch.stft(x, n_fft, n_fft // 4, hann, normalized=True, center=True)``: ``[N, L]`` -> ``[N, n_fft//2+1, T]``."""
    check_rows(x)
    check_n_fft(n_fft)
    hop = hop_of(n_fft)
    xp = reflect_pad(x.astype(dtype, copy=False), n_fft // 2, n_fft // 2)
    window = hann_periodic(n_fft, dtype) / np.sqrt(n_fft).astype(dtype)
    return rfft_frames(frames_view(xp, n_fft, hop), window).swapaxes(-1, -2)


def plain_istft(z: np.ndarray, length: int, n_fft: int = 4096, dtype: type = np.float32) -> np.ndarray:
    """``torch.istft(z, n_fft, n_fft // 4, hann, normalized=True, center=True, length)``: ``[N, F, T]`` -> ``[N, length]``."""
    check_n_fft(n_fft)
    hop = hop_of(n_fft)
    window = hann_periodic(n_fft, dtype)
    count = z.shape[-1]
    y = irfft_overlap_add(z, n_fft, window * np.sqrt(n_fft).astype(dtype), 0, count)
    return normalize_ola(y, window_envelope(window, hop, count), n_fft // 2, length)


# --------------------------------------------------------------------------------------------------
# Demucs conventions


def demucs_pad(x: np.ndarray, n_fft: int) -> tuple[np.ndarray, int]:
    """``HTDemucs._spec``'s padding: ``hop // 2 * 3`` left, up to a whole number of hops plus that right."""
    hop = hop_of(n_fft)
    length = x.shape[-1]
    le = int(math.ceil(length / hop))
    pad = hop // 2 * 3
    return reflect_pad(x, pad, pad + le * hop - length), le


def demucs_spec(x: np.ndarray, n_fft: int = 4096, dtype: type = np.float32) -> np.ndarray:
    """``HTDemucs._spec`` on ``[N, L]`` rows -> complex ``[N, n_fft // 2, ceil(L / hop)]``.

    torch pads by ``n_fft // 2`` again (``center=True``) and demucs keeps frames ``[2 : 2 + le]``; those are
    exactly the frames starting at ``k * hop`` of the demucs-padded signal, so this frames it directly and
    never computes the four frames demucs throws away. The Nyquist bin is dropped.
    """
    check_rows(x)
    check_n_fft(n_fft)
    hop = hop_of(n_fft)
    xp, le = demucs_pad(x.astype(dtype, copy=False), n_fft)
    window = hann_periodic(n_fft, dtype) / np.sqrt(n_fft).astype(dtype)
    z = rfft_frames(frames_view(xp, n_fft, hop)[:, :le], window)
    return z[..., :-1].swapaxes(-1, -2)


def demucs_ispec(z: np.ndarray, length: int, n_fft: int = 4096, dtype: type = np.float32) -> np.ndarray:
    """``HTDemucs._ispec`` on ``[N, n_fft // 2, T]`` -> ``[N, length]``.

    demucs appends a zero Nyquist bin (``irfft`` with ``n=n_fft`` does that) and two zero frames on each side:
    those frames add nothing to the signal but their squared windows do count in the normalization, so the
    frames are placed from slot 2 of ``T + 4`` slots. The output starts ``n_fft // 2`` (torch's centering)
    plus ``hop // 2 * 3`` (demucs's padding) into the overlap-added buffer.
    """
    check_n_fft(n_fft)
    hop = hop_of(n_fft)
    window = hann_periodic(n_fft, dtype)
    total = z.shape[-1] + 4
    y = irfft_overlap_add(z, n_fft, window * np.sqrt(n_fft).astype(dtype), 2, total)
    start = n_fft // 2 + hop // 2 * 3
    return normalize_ola(y, window_envelope(window, hop, total), start, length)


# --------------------------------------------------------------------------------------------------
# the plugin


class NumpySTFTParams(Params):
    dtype: Literal["float32", "float64"] = "float32"


class NumpySTFT(STFTBackend):
    """numpy.fft in Demucs conventions: explicit framing, periodic Hann, 1/sqrt(n_fft) scaling, overlap-add.

    ``dtype`` is the arithmetic precision inside; the spectrogram crosses the boundary as complex64 and the
    waveform as float32, as with the other backends.

    Example config::

        stft: [torch, numpy, {numpy: {dtype: float64}}]
    """

    name = "numpy"
    Params = NumpySTFTParams

    @property
    def _dtype(self) -> type:
        return np.float64 if self.params.dtype == "float64" else np.float32

    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_signal, to_rows

        check_signal(x)
        rows, lead = to_rows(x)
        z = demucs_spec(rows, n_fft, self._dtype)
        return torch.from_numpy(z.astype(np.complex64, copy=False).reshape(*lead, *z.shape[-2:]))

    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_spectrogram, spec_to_rows

        check_spectrogram(z, length, n_fft)
        rows, lead = spec_to_rows(z)
        x = demucs_ispec(rows, length, n_fft, self._dtype)
        return torch.from_numpy(x.astype(np.float32, copy=False).reshape(*lead, length))
