"""``vdsp`` STFT backend: Apple Accelerate's packed real FFT (``vDSP_fftm_zrip``), or its emulation.

On macOS the FFT and the window come from Accelerate through ``ctypes``. Elsewhere :class:`EmulatedZrip`
reproduces what ``vDSP_fft_zrip`` does to the bytes: the same split-complex input (even samples in ``realp``,
odd samples in ``imagp``, as ``vDSP_ctoz`` leaves them), the same packed output, the same factor-2 forward
scaling and unscaled inverse, in the same precision (float32, or float64 for the ``...D`` variants). Everything
around the FFT call (windowing, ``ctoz``/``ztoc``, unpacking and scaling to torch's ``normalized=True`` bins,
overlap-add) is shared by both paths, so it is the code a Swift port needs and the code the tests check.

vDSP packed layout for an ``n``-point real FFT (``h = n / 2`` split-complex elements)::

    realp[0] = 2 * X[0]          (DC, real)
    imagp[0] = 2 * X[h]          (Nyquist, real)
    realp[k] + i imagp[k] = 2 * X[k],  k = 1 .. h - 1

where ``X`` is the mathematical DFT ``sum_m x[m] exp(-2 pi i k m / n)``. The inverse takes the same layout
and returns ``n * irfft(X)`` (``sum_k``, no ``1 / n``), split even/odd, so forward then inverse multiplies by
``2 n``. torch's ``normalized=True`` bins are therefore ``packed * 0.5 / sqrt(n)``, and a torch-normalized
spectrum ``B`` packed without any factor comes back through the inverse as ``sqrt(n) * frame``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
from typing import Literal

import numpy as np
import torch

from htx.api import Params, STFTBackend, UnavailableError
from htx_plugins.stft.numpy_stft import (
    _BLOCK_FRAMES,  # frames per FFT call: the split-complex block stays in cache between windowing, FFT and unpacking
    check_n_fft,
    check_rows,
    demucs_pad,
    frames_view,
    hop_of,
    normalize_ola,
    overlap_add,
    reflect_pad,
    window_envelope,
)

ACCELERATE = "/System/Library/Frameworks/Accelerate.framework/Accelerate"
FFT_FORWARD = 1  # kFFTDirection_Forward
FFT_INVERSE = -1  # kFFTDirection_Inverse
FFT_RADIX2 = 0  # kFFTRadix2
HANN_DENORM = 0  # vDSP_HANN_DENORM: 0.5 * (1 - cos(2 pi k / n)), k = 0 .. n - 1 (periodic)


# --------------------------------------------------------------------------------------------------
# the two FFT kernels: same interface, same layout


class EmulatedZrip:
    """``vDSP_fftm_zrip`` and ``vDSP_hann_window`` reproduced with numpy in the same precision.

    ``forward``/``inverse`` transform ``realp, imagp`` (``[M, n / 2]`` each, ``M`` signals) in place, like the
    Accelerate call. The FFT is the same split-radix trick vDSP uses: a complex FFT of length ``n / 2`` over
    ``z = realp + i imagp`` followed by the twiddle step that separates the even and odd halves.
    """

    native = False

    def __init__(self, n_fft: int, dtype: type = np.float32) -> None:
        self.n = n_fft
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.complex64)
        h = n_fft // 2
        k = np.arange(h, dtype=np.float64)
        # W^k = exp(-2 pi i k / n), rounded to the working precision as a setup's twiddle table is.
        self.twiddle = np.exp(-2j * np.pi * k / n_fft).astype(self.cdtype)
        self.mirror = (-np.arange(h)) % h  # index of h - k (k = 0 maps to 0)

    def hann(self) -> np.ndarray:
        """``vDSP_hann_window(w, n, vDSP_HANN_DENORM)``: periodic Hann in the working precision."""
        k = np.arange(self.n, dtype=self.dtype)
        return (self.dtype.type(0.5) * (self.dtype.type(1.0) - np.cos(self.dtype.type(2.0 * np.pi / self.n) * k))).astype(self.dtype)

    def forward(self, realp: np.ndarray, imagp: np.ndarray) -> None:
        z = np.empty(realp.shape, dtype=self.cdtype)
        z.real, z.imag = realp, imagp
        zf = np.fft.fft(z, axis=-1)
        zc = np.conj(zf[:, self.mirror])
        # 2 X[k] = (Z[k] + conj Z[h-k]) - i W^k (Z[k] - conj Z[h-k])
        y = (zf + zc) - 1j * self.twiddle * (zf - zc)
        re0, im0 = zf[:, 0].real, zf[:, 0].imag
        realp[:] = y.real
        imagp[:] = y.imag
        realp[:, 0] = 2 * (re0 + im0)  # DC
        imagp[:, 0] = 2 * (re0 - im0)  # Nyquist, packed where DC's (zero) imaginary part would be

    def inverse(self, realp: np.ndarray, imagp: np.ndarray) -> None:
        y = np.empty(realp.shape, dtype=self.cdtype)
        y.real, y.imag = realp, imagp
        dc, nyq = realp[:, 0].copy(), imagp[:, 0].copy()
        y[:, 0] = dc  # DC is real; its slot's imaginary part holds the Nyquist value
        yc = np.conj(y[:, self.mirror])
        yc[:, 0] = nyq  # conj(Y[h - 0]) = Y[h] = Nyquist (real)
        # 2 Z[k] = (Y[k] + conj Y[h-k]) + i conj(W^k) (Y[k] - conj Y[h-k]); output = sum_k 2 Z[k] e^{+...}
        z2 = (y + yc) + 1j * np.conj(self.twiddle) * (y - yc)
        out = np.fft.ifft(z2, axis=-1) * self.dtype.type(self.n // 2)
        realp[:] = out.real
        imagp[:] = out.imag


class DSPSplitComplex(ctypes.Structure):
    _fields_ = [("realp", ctypes.POINTER(ctypes.c_float)), ("imagp", ctypes.POINTER(ctypes.c_float))]


class DSPDoubleSplitComplex(ctypes.Structure):
    _fields_ = [("realp", ctypes.POINTER(ctypes.c_double)), ("imagp", ctypes.POINTER(ctypes.c_double))]


class AccelerateZrip:
    """The real ``vDSP_fftm_zrip`` (float32) or ``vDSP_fftm_zripD`` (float64) through ``ctypes`` (macOS only)."""

    native = True

    def __init__(self, n_fft: int, dtype: type = np.float32) -> None:
        self.n = n_fft
        self.dtype = np.dtype(dtype)
        self.log2n = int(math.log2(n_fft))
        self.lib = ctypes.CDLL(ACCELERATE)
        double = self.dtype == np.float64
        sfx = "D" if double else ""
        self.ctype = ctypes.c_double if double else ctypes.c_float
        self.split_type = DSPDoubleSplitComplex if double else DSPSplitComplex
        create = getattr(self.lib, f"vDSP_create_fftsetup{sfx}")
        create.restype, create.argtypes = ctypes.c_void_p, [ctypes.c_ulong, ctypes.c_int]
        self._destroy = getattr(self.lib, f"vDSP_destroy_fftsetup{sfx}")
        self._destroy.restype, self._destroy.argtypes = None, [ctypes.c_void_p]
        self._fftm = getattr(self.lib, f"vDSP_fftm_zrip{sfx}")
        self._fftm.restype = None
        self._fftm.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(self.split_type), ctypes.c_long, ctypes.c_long,
            ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int,
        ]
        self._hann = getattr(self.lib, f"vDSP_hann_window{sfx}")
        self._hann.restype = None
        self._hann.argtypes = [ctypes.POINTER(self.ctype), ctypes.c_ulong, ctypes.c_int]
        self.setup = create(self.log2n, FFT_RADIX2)
        if not self.setup:
            raise UnavailableError(f"vDSP_create_fftsetup{sfx}({self.log2n}) returned NULL (out of memory?)")

    def __del__(self) -> None:
        setup = getattr(self, "setup", None)
        if setup:
            self._destroy(setup)
            self.setup = None

    def _ptr(self, a: np.ndarray) -> ctypes._Pointer:
        return a.ctypes.data_as(ctypes.POINTER(self.ctype))

    def hann(self) -> np.ndarray:
        w = np.empty(self.n, dtype=self.dtype)
        self._hann(self._ptr(w), self.n, HANN_DENORM)
        return w

    def _run(self, realp: np.ndarray, imagp: np.ndarray, direction: int) -> None:
        assert realp.flags.c_contiguous and imagp.flags.c_contiguous and realp.dtype == self.dtype
        signals, h = realp.shape
        split = self.split_type(self._ptr(realp), self._ptr(imagp))
        # stride 1 inside a signal, h between signals, M signals in one call
        self._fftm(self.setup, ctypes.byref(split), 1, h, self.log2n, signals, direction)

    def forward(self, realp: np.ndarray, imagp: np.ndarray) -> None:
        self._run(realp, imagp, FFT_FORWARD)

    def inverse(self, realp: np.ndarray, imagp: np.ndarray) -> None:
        self._run(realp, imagp, FFT_INVERSE)


@functools.lru_cache(maxsize=1)
def accelerate_status() -> tuple[bool, str]:
    """Whether Accelerate's vDSP can be called here, and why not."""
    if platform.system() != "Darwin":
        return False, f"Apple Accelerate (vDSP) exists only on macOS; this is {platform.system()} (use mode: emulated or auto)"
    try:
        lib = ctypes.CDLL(ACCELERATE)
        lib.vDSP_fftm_zrip  # noqa: B018 - resolving the symbol is the check
    except (OSError, AttributeError) as exc:
        return False, f"cannot load {ACCELERATE}: {exc}"
    return True, ""


# --------------------------------------------------------------------------------------------------
# the code a Swift port writes around vDSP_fftm_zrip: pack, unpack, scale


def forward_scale(n_fft: int) -> float:
    """Packed vDSP output times this is torch's ``normalized=True`` bin (vDSP's forward is 2x the DFT)."""
    return 0.5 / math.sqrt(n_fft)


def inverse_scale(n_fft: int) -> float:
    """vDSP inverse output times this is the ``normalized=True`` inverse frame (vDSP's inverse is n x irfft)."""
    return 1.0 / math.sqrt(n_fft)


def ctoz_windowed(frames: np.ndarray, window: np.ndarray, realp: np.ndarray, imagp: np.ndarray) -> None:
    """``vDSP_vmul`` by the window then ``vDSP_ctoz``: even samples to ``realp``, odd to ``imagp`` ([M, n / 2])."""
    np.multiply(frames[..., 0::2], window[0::2], out=realp)
    np.multiply(frames[..., 1::2], window[1::2], out=imagp)


def unpack_bins(realp: np.ndarray, imagp: np.ndarray, n_fft: int, keep_nyquist: bool) -> np.ndarray:
    """Packed ``[M, n/2]`` -> torch-normalized bins ``[M, n/2 + 1]`` (or ``[M, n/2]`` without Nyquist)."""
    s = realp.dtype.type(forward_scale(n_fft))
    h = realp.shape[-1]
    out = np.empty((realp.shape[0], h + 1 if keep_nyquist else h), dtype=np.result_type(realp.dtype, np.complex64))
    out.real[:, :h] = realp
    out.imag[:, :h] = imagp
    out.imag[:, 0] = 0  # the slot held the Nyquist value, DC itself is real
    if keep_nyquist:
        out[:, h] = imagp[:, 0]
    out *= s
    return out


def pack_bins(bins: np.ndarray, n_fft: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Torch-normalized bins ``[M, n/2]`` or ``[M, n/2 + 1]`` -> packed ``realp, imagp`` for the inverse.

    No factor is applied here (see :func:`inverse_scale`). DC's imaginary part is dropped, as every real
    inverse FFT does; a missing Nyquist bin (Demucs drops it) packs as 0.
    """
    h = n_fft // 2
    realp = np.ascontiguousarray(bins.real[:, :h], dtype=dtype)
    imagp = np.ascontiguousarray(bins.imag[:, :h], dtype=dtype)
    imagp[:, 0] = bins[:, h].real if bins.shape[-1] > h else 0
    return realp, imagp


def ztoc_windowed(realp: np.ndarray, imagp: np.ndarray, window: np.ndarray, out: np.ndarray) -> None:
    """``vDSP_ztoc`` back to interleaved samples, times the (already scaled) synthesis window."""
    np.multiply(realp, window[0::2], out=out[..., 0::2])
    np.multiply(imagp, window[1::2], out=out[..., 1::2])


class VDSPTransform:
    """STFT frames <-> bins through one zrip kernel (native or emulated), block by block."""

    def __init__(self, n_fft: int, dtype: type = np.float32, native: bool = False) -> None:
        check_n_fft(n_fft)
        self.n = n_fft
        self.dtype = np.dtype(dtype)
        self.kernel: AccelerateZrip | EmulatedZrip = (AccelerateZrip if native else EmulatedZrip)(n_fft, dtype)
        self.window = self.kernel.hann()

    def frames_to_bins(self, frames: np.ndarray, keep_nyquist: bool) -> np.ndarray:
        """Frames ``[N, T, n]`` (any strides) -> bins ``[N, T, F]``: window, ctoz, zrip, unpack, scale."""
        rows, count, n = frames.shape
        h = n // 2
        out = np.empty((rows, count, h + 1 if keep_nyquist else h), dtype=np.result_type(self.dtype, np.complex64))
        flat_out = out.reshape(rows * count, -1)
        flat = frames.reshape(rows * count, n) if frames.flags.c_contiguous else None
        realp = np.empty((min(_BLOCK_FRAMES, rows * count), h), dtype=self.dtype)
        imagp = np.empty_like(realp)
        for r in range(rows):
            for start in range(0, count, _BLOCK_FRAMES):
                stop = min(count, start + _BLOCK_FRAMES)
                m = stop - start
                src = flat[r * count + start: r * count + stop] if flat is not None else frames[r, start:stop]
                re, im = realp[:m], imagp[:m]
                ctoz_windowed(src, self.window, re, im)
                self.kernel.forward(re, im)
                flat_out[r * count + start: r * count + stop] = unpack_bins(re, im, n, keep_nyquist)
        return out

    def bins_to_frames(self, bins: np.ndarray) -> np.ndarray:
        """Bins ``[N, T, F]`` (any strides) -> windowed time frames ``[N, T, n]``: pack, zrip inverse, ztoc, scale."""
        rows, count, _ = bins.shape
        n = self.n
        out = np.empty((rows, count, n), dtype=self.dtype)
        synth = (self.window * self.dtype.type(inverse_scale(n))).astype(self.dtype)
        for r in range(rows):
            for start in range(0, count, _BLOCK_FRAMES):
                stop = min(count, start + _BLOCK_FRAMES)
                realp, imagp = pack_bins(bins[r, start:stop], n, self.dtype)
                self.kernel.inverse(realp, imagp)
                ztoc_windowed(realp, imagp, synth, out[r, start:stop])
        return out


# --------------------------------------------------------------------------------------------------
# plain and Demucs-convention STFTs on numpy rows


def plain_stft(x: np.ndarray, n_fft: int = 4096, transform: VDSPTransform | None = None) -> np.ndarray:
    """Plain ``center=True`` STFT (every bin, every frame): ``[N, L]`` -> ``[N, n_fft // 2 + 1, T]``."""
    check_rows(x)
    t = transform or VDSPTransform(n_fft)
    xp = reflect_pad(x.astype(t.dtype, copy=False), n_fft // 2, n_fft // 2)
    return t.frames_to_bins(frames_view(xp, n_fft, hop_of(n_fft)), keep_nyquist=True).swapaxes(-1, -2)


def plain_istft(z: np.ndarray, length: int, n_fft: int = 4096, transform: VDSPTransform | None = None) -> np.ndarray:
    """Inverse of :func:`plain_stft` (torch ``istft`` with ``center=True, length``): ``[N, F, T]`` -> ``[N, length]``."""
    t = transform or VDSPTransform(n_fft)
    hop = hop_of(n_fft)
    frames = t.bins_to_frames(z.swapaxes(-1, -2))
    count = frames.shape[1]
    y = overlap_add(frames, hop, 0, count)
    return normalize_ola(y, window_envelope(t.window, hop, count), n_fft // 2, length)


def demucs_spec(x: np.ndarray, n_fft: int = 4096, transform: VDSPTransform | None = None) -> np.ndarray:
    """``HTDemucs._spec`` through vDSP's packed FFT: ``[N, L]`` -> ``[N, n_fft // 2, ceil(L / hop)]``."""
    check_rows(x)
    t = transform or VDSPTransform(n_fft)
    xp, le = demucs_pad(x.astype(t.dtype, copy=False), n_fft)
    return t.frames_to_bins(frames_view(xp, n_fft, hop_of(n_fft))[:, :le], keep_nyquist=False).swapaxes(-1, -2)


def demucs_ispec(z: np.ndarray, length: int, n_fft: int = 4096, transform: VDSPTransform | None = None) -> np.ndarray:
    """``HTDemucs._ispec`` through vDSP's packed inverse FFT: ``[N, n_fft // 2, T]`` -> ``[N, length]``."""
    t = transform or VDSPTransform(n_fft)
    hop = hop_of(n_fft)
    frames = t.bins_to_frames(z.swapaxes(-1, -2))
    total = frames.shape[1] + 4  # two zero frames each side count in the normalization (see numpy backend)
    y = overlap_add(frames, hop, 2, total)
    return normalize_ola(y, window_envelope(t.window, hop, total), n_fft // 2 + hop // 2 * 3, length)


# --------------------------------------------------------------------------------------------------
# the plugin


class VDSPSTFTParams(Params):
    dtype: Literal["float32", "float64"] = "float32"
    #: ``auto``: Accelerate on macOS, the emulation elsewhere; ``native``: Accelerate or unavailable;
    #: ``emulated``: the emulation everywhere (to compare it with Accelerate on a Mac).
    mode: Literal["auto", "native", "emulated"] = "auto"


class VDSPSTFT(STFTBackend):
    """Apple vDSP packed real FFT in Demucs conventions (Accelerate on macOS, emulated elsewhere).

    float32 uses ``vDSP_fftm_zrip``, float64 ``vDSP_fftm_zripD``. Off macOS the backend runs the emulation and
    says so: ``emulated`` is True and results show ``vdsp (emulated)``; ``mode: native`` there makes the
    trials ``unavailable`` instead.

    Example config::

        stft: [torch, vdsp, {vdsp: {mode: native}}]
    """

    name = "vdsp"
    Params = VDSPSTFTParams

    def __init__(self, params: VDSPSTFTParams | None = None) -> None:
        super().__init__(params)
        self.emulated = not self._native()
        self._transforms: dict[int, VDSPTransform] = {}

    def _native(self) -> bool:
        if self.params.mode == "emulated":
            return False
        return accelerate_status()[0]

    def available(self) -> tuple[bool, str]:
        if self.params.mode == "native":
            return accelerate_status()
        return True, ""

    def transform(self, n_fft: int) -> VDSPTransform:
        """The (cached) transform for ``n_fft``: one FFT setup and window per size, as a Swift port keeps them."""
        if n_fft not in self._transforms:
            ok, why = self.available()
            if not ok:
                raise UnavailableError(f"stft {self.label}: {why}")
            self._transforms[n_fft] = VDSPTransform(n_fft, np.dtype(self.params.dtype).type, native=self._native())
        return self._transforms[n_fft]

    def stft(self, x: torch.Tensor, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_signal, to_rows

        check_signal(x)
        check_n_fft(n_fft)
        rows, lead = to_rows(x)
        z = demucs_spec(rows, n_fft, self.transform(n_fft))
        return torch.from_numpy(z.astype(np.complex64, copy=False).reshape(*lead, *z.shape[-2:]))

    def istft(self, z: torch.Tensor, length: int, n_fft: int = 4096) -> torch.Tensor:
        from htx_plugins.stft.checks import check_spectrogram, spec_to_rows

        check_n_fft(n_fft)
        check_spectrogram(z, length, n_fft)
        rows, lead = spec_to_rows(z)
        x = demucs_ispec(rows, length, n_fft, self.transform(n_fft))
        return torch.from_numpy(x.astype(np.float32, copy=False).reshape(*lead, length))
