"""Property tests (hypothesis) of every STFT backend: Parseval per frame, real-FFT conjugate symmetry,
COLA of the squared Hann window at hop n_fft / 4, linearity. Small FFT sizes keep the examples fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from htx_plugins.stft import numpy_stft
from htx_plugins.stft.numpy_stft import NumpySTFT
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.stft.vdsp_stft import VDSPSTFT, VDSPTransform

BACKENDS = ["torch", "numpy", "vdsp"]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
n_ffts = st.sampled_from([16, 64, 256, 1024])
seeds = st.integers(0, 2**31 - 1)


def window(backend: str, n: int) -> np.ndarray:
    """The analysis window each backend actually uses."""
    if backend == "torch":
        return torch.hann_window(n).numpy()
    if backend == "numpy":
        return numpy_stft.hann_periodic(n, np.float32)
    return VDSPTransform(n, np.float32).window  # vDSP_hann_window(DENORM), or its emulation


def frame_spectra(backend: str, frames: np.ndarray) -> np.ndarray:
    """One-frame transforms ``[M, n] -> [M, n / 2 + 1]`` (window, normalized=True) through each backend's kernel."""
    n = frames.shape[-1]
    if backend == "torch":
        return torch.stft(torch.from_numpy(frames), n, n // 4, window=torch.hann_window(n), normalized=True,
                          center=False, return_complex=True).numpy()[..., 0]
    if backend == "numpy":
        return numpy_stft.rfft_frames(frames[None], window("numpy", n) / np.float32(np.sqrt(n)))[0]
    return VDSPTransform(n, np.float32).frames_to_bins(frames[None], keep_nyquist=True)[0]


def random_frames(seed: int, n: int, count: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, n)) * rng.uniform(0.01, 1.0)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=n_ffts, seed=seeds)
def test_parseval_per_frame(backend, n, seed):
    frames = random_frames(seed, n)
    spec = frame_spectra(backend, frames).astype(np.complex128)
    # ortho scaling: sum (w x)^2 = |X_0|^2 + |X_{n/2}|^2 + 2 sum_{0<k<n/2} |X_k|^2
    energy_bins = np.abs(spec[:, 0]) ** 2 + np.abs(spec[:, -1]) ** 2 + 2 * np.sum(np.abs(spec[:, 1:-1]) ** 2, axis=-1)
    energy_time = np.sum((frames.astype(np.float64) * window(backend, n)) ** 2, axis=-1)
    np.testing.assert_allclose(energy_bins, energy_time, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=n_ffts, seed=seeds)
def test_real_fft_conjugate_symmetry(backend, n, seed):
    """A real frame has real DC and Nyquist bins, and reversing it (circularly) conjugates its spectrum.

    The periodic Hann window is itself circularly symmetric (w[n - m] = w[m]), so this holds windowed too.
    """
    frames = random_frames(seed, n)
    reversed_frames = np.ascontiguousarray(np.roll(frames[:, ::-1], 1, axis=-1))
    spec, spec_rev = frame_spectra(backend, frames), frame_spectra(backend, reversed_frames)
    scale = np.abs(spec).max()
    assert np.abs(spec[:, 0].imag).max() <= 1e-6 * scale and np.abs(spec[:, -1].imag).max() <= 1e-6 * scale
    np.testing.assert_allclose(spec_rev, np.conj(spec), atol=2e-6 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=n_ffts, offset=st.integers(0, 10_000))
def test_squared_hann_is_cola_at_quarter_hop(backend, n, offset):
    """sum_t w^2[m - t * n/4] = 3/2 for every m: the window-square normalization is a constant inside."""
    w2 = window(backend, n).astype(np.float64) ** 2
    hop = n // 4
    m = offset % n
    total = sum(w2[(m + j * hop) % n] for j in range(4))
    assert abs(total - 1.5) < 1e-6
    env = numpy_stft.window_envelope(window(backend, n), hop, 12)
    np.testing.assert_allclose(env[n: 12 * hop], 1.5, atol=1e-6)  # the numpy/vdsp overlap-add envelope


def plugin(backend: str):
    return {"torch": TorchSTFT, "numpy": NumpySTFT, "vdsp": VDSPSTFT}[backend]()


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(n=st.sampled_from([64, 256]), length=st.integers(1, 3000), seed=seeds,
       a=st.floats(-2, 2, allow_nan=False), b=st.floats(-2, 2, allow_nan=False))
def test_linearity(backend, n, length, seed, a, b):
    """stft(a x + b y) = a stft(x) + b stft(y), and the same for istft (Demucs conventions, padding included)."""
    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(rng.uniform(-0.5, 0.5, (2, length)).astype(np.float32)) for _ in range(2))
    stft = plugin(backend)
    zx, zy = stft.stft(x, n), stft.stft(y, n)
    mix = stft.stft(a * x + b * y, n)
    scale = max(1.0, float((a * zx + b * zy).abs().max()))
    assert (mix - (a * zx + b * zy)).abs().max().item() <= 2e-6 * scale
    back = stft.istft(a * zx + b * zy, length, n)
    expected = a * stft.istft(zx, length, n) + b * stft.istft(zy, length, n)
    assert (back - expected).abs().max().item() <= 2e-6 * max(1.0, abs(a) + abs(b))


def test_frame_helpers_agree_with_the_exact_dft():
    """The one-frame transforms above are each backend's normalized=True bins (guards the helpers)."""
    frames = random_frames(1, 256)
    exact = np.fft.rfft(frames.astype(np.float64) * numpy_stft.hann_periodic(256, np.float64), axis=-1) / 16
    for backend in BACKENDS:
        np.testing.assert_allclose(frame_spectra(backend, frames), exact, atol=2e-6)


def test_torch_ispec_hands_istft_a_real_dc_bin(monkeypatch):
    """torch's inverse FFT on CUDA does not ignore the DC bin's imaginary part (the CPU does): HTDemucs's
    output then differs by device. The torch backend drops it, so torch.istft never sees it on any device."""
    import torch

    from htx_plugins.stft import torch_stft

    seen = []
    real_istft = torch.istft

    def spy(z, *args, **kwargs):
        seen.append(z.detach().clone())
        return real_istft(z, *args, **kwargs)

    monkeypatch.setattr(torch_stft.torch, "istft", spy)
    z = torch.randn(2, 2048, 12, dtype=torch.complex64)
    out = torch_stft.TorchSTFT().istft(z, 12000)
    assert out.shape == (2, 12000) and len(seen) == 1
    assert torch.count_nonzero(seen[0][:, 0].imag) == 0  # DC: real only
    assert torch.equal(seen[0][:, 1:2048, 2:-2], z[:, 1:])  # every other bin as given (frames padded by 2)
