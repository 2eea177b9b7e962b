"""``htx bench stft``: forward + inverse STFT of a long stereo clip per backend, side by side in one run.

Each backend's throughput is reported relative to ``torch`` on the same machine, next to a physical
reference: the time the minimum memory traffic of an STFT round trip takes at this machine's measured copy
bandwidth. Rounds are interleaved (every backend once per round) so load changes hit all backends alike.
An optional parity table compares each backend with the exact (float64) Demucs-convention STFT.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import typer

from htx.api import BUILTIN_FIXTURES as BUILTINS
from htx.api import STFTBackend, demucs_ispec, demucs_spec, err, handle_errors, load_registry, out

SAMPLERATE = 44100
N_FFT = 4096


@dataclass
class BackendTiming:
    """Timings of one backend (seconds per forward and inverse call, one entry per round)."""

    label: str
    emulated: bool
    forward: list[float] = field(default_factory=list)
    inverse: list[float] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def total(self) -> float:
        """Median of forward + inverse over rounds."""
        return statistics.median(f + i for f, i in zip(self.forward, self.inverse))


@dataclass
class STFTBench:
    """What one ``htx bench stft`` run measured."""

    seconds: float
    channels: int
    samples: int
    frames: int
    bytes_moved: int
    copy_bandwidth: float  # bytes per second (read + write)
    timings: list[BackendTiming]
    machine: dict[str, Any]

    @property
    def bound_s(self) -> float:
        return self.bytes_moved / self.copy_bandwidth


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Bytes per second (read + write) of a large numpy copy: the best of ``repeats`` runs."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def round_trip_bytes(channels: int, samples: int, n_fft: int = N_FFT) -> tuple[int, int]:
    """Minimum bytes an STFT round trip moves, and the frame count.

    Forward reads the float32 audio and writes the complex64 spectrogram; inverse reads the spectrogram and
    writes the audio. Framing, windowing and overlap-add can in principle stay in cache, so they add nothing.
    """
    frames = math.ceil(samples / (n_fft // 4))
    audio = channels * samples * 4
    spec = channels * (n_fft // 2) * frames * 8
    return 2 * audio + 2 * spec, frames


def time_backends(backends: list[STFTBackend], audio: torch.Tensor, repeats: int) -> list[BackendTiming]:
    """Warm each backend up once, then time ``repeats`` interleaved rounds of stft + istft."""
    length = audio.shape[-1]
    timings: list[BackendTiming] = []
    live: list[tuple[STFTBackend, BackendTiming]] = []
    for b in backends:
        t = BackendTiming(b.label, bool(b.emulated))
        ok, why = b.available()
        if not ok:
            t.unavailable = why
        else:
            b.istft(b.stft(audio, N_FFT), length, N_FFT)  # warm-up: setups, caches, thread pools
            live.append((b, t))
        timings.append(t)
    for _ in range(repeats):
        for b, t in live:
            t0 = time.perf_counter()
            z = b.stft(audio, N_FFT)
            t1 = time.perf_counter()
            b.istft(z, length, N_FFT)
            t2 = time.perf_counter()
            t.forward.append(t1 - t0)
            t.inverse.append(t2 - t1)
            del z
    return timings


def run(backends: list[STFTBackend], seconds: float = 60.0, channels: int = 2, repeats: int = 5, seed: int = 0) -> STFTBench:
    """Time ``backends`` on ``seconds`` of seeded noise (``channels`` x 44.1 kHz) and measure copy bandwidth."""
    samples = int(round(seconds * SAMPLERATE))
    gen = torch.Generator().manual_seed(seed)
    audio = (0.2 * torch.randn(channels, samples, generator=gen)).clamp(-1, 1)
    nbytes, frames = round_trip_bytes(channels, samples)
    bandwidth = copy_bandwidth()
    timings = time_backends(backends, audio, repeats)
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
    }
    return STFTBench(seconds, channels, samples, frames, nbytes, bandwidth, timings, machine)


# --------------------------------------------------------------------------------------------------
# parity against the exact Demucs-convention STFT


def parity_signal(kind: str, length: int, channels: int = 2) -> np.ndarray:
    """The built-in fixtures (silence, sine_440, white_noise; default options) or a chirp (20 Hz -> 20 kHz,
    amplitude 0.7) as float32 ``[C, L]``."""
    if kind in BUILTINS:
        params, generate, _ = BUILTINS[kind]
        return generate(params(), SAMPLERATE, length, channels)
    if kind != "chirp":
        raise ValueError(f"unknown parity signal {kind!r}")
    t = np.arange(length) / SAMPLERATE
    k = math.log(20000.0 / 20.0)
    x = np.stack([0.7 * np.sin(2 * np.pi * 20.0 * (np.exp(k * t) - 1) / k + 0.5 * c) for c in range(channels)])
    return x.astype(np.float32)


def _snr(ref: np.ndarray, out: np.ndarray) -> float | None:
    num = float(np.sum(np.abs(ref.astype(np.complex128)) ** 2))
    den = float(np.sum(np.abs(ref.astype(np.complex128) - out) ** 2))
    if num == 0.0:
        return None
    return math.inf if den == 0.0 else 10 * math.log10(num / den)


def parity(backends: list[STFTBackend], kinds: tuple[str, ...] = ("silence", "sine_440", "white_noise", "chirp"),
           length: int = 44100) -> list[dict[str, Any]]:
    """Per backend and signal: max |diff| and SNR of the spectrogram vs the exact (float64) Demucs STFT, and of
    the round trip ``istft(stft(x))`` vs the exact Demucs round trip (which is not an identity)."""

    rows = []
    for kind in kinds:
        x = parity_signal(kind, length)
        x64 = torch.from_numpy(x.astype(np.float64))
        golden = demucs_spec(x64, N_FFT, torch.float64)
        golden_rt = demucs_ispec(golden, length, N_FFT).numpy()
        golden = golden.numpy()
        for b in backends:
            if not b.available()[0]:
                continue
            z = b.stft(torch.from_numpy(x), N_FFT)
            back = b.istft(z, length, N_FFT).numpy()
            z = z.numpy()
            rows.append({
                "backend": b.label + (" (emulated)" if b.emulated else ""), "signal": kind,
                "spec_max_abs_diff": float(np.abs(z - golden).max()), "spec_snr_db": _snr(golden, z),
                "rt_max_abs_diff": float(np.abs(back - golden_rt).max()), "rt_snr_db": _snr(golden_rt, back),
            })
    return rows


# --------------------------------------------------------------------------------------------------
# report


def _fmt_db(v: float | None) -> str:
    if v is None:
        return "n/a (silent)"
    return "inf" if math.isinf(v) else f"{v:.1f}"


def print_report(console: Any, bench: STFTBench, parity_rows: list[dict[str, Any]] | None = None) -> None:
    """The benchmark as rich tables: timings with ratios to torch and to the bandwidth bound, then parity."""
    from rich.markup import escape
    from rich.table import Table

    m = bench.machine
    console.print(
        f"htx bench stft: forward + inverse STFT of {bench.seconds:g} s of {bench.channels}-channel audio "
        f"({SAMPLERATE} Hz, n_fft {N_FFT}, hop {N_FFT // 4}, {bench.frames} frames per channel); "
        f"median of {len(next((t.forward for t in bench.timings if t.forward), []))} interleaved rounds",
        highlight=False,
    )
    console.print(f"machine: {m['platform']} ({m['processor']}), torch {m['torch']} ({m['torch_threads']} threads), "
                  f"numpy {m['numpy']}", highlight=False)
    console.print(
        f"memory-bandwidth bound: {bench.bytes_moved / 1e6:.1f} MB moved (audio in/out float32, spectrogram "
        f"out/in complex64) / {bench.copy_bandwidth / 1e9:.2f} GB/s measured copy bandwidth = {bench.bound_s * 1e3:.1f} ms",
        highlight=False,
    )
    table = Table(title="STFT round trip per backend")
    for col in ("backend", "forward ms", "inverse ms", "total ms", "x realtime", "throughput vs torch", "x bound"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    torch_t = next((t for t in bench.timings if t.label == "torch" and t.forward), None)
    for t in bench.timings:
        name = escape(t.label + (" (emulated)" if t.emulated else ""))
        if t.unavailable is not None:
            table.add_row(name, f"unavailable: {escape(t.unavailable)}", "", "", "", "", "")
            continue
        total = t.total
        rel = f"{torch_t.total / total:.2f}x" if torch_t is not None else "n/a (no torch)"
        table.add_row(
            name, f"{statistics.median(t.forward) * 1e3:.1f}", f"{statistics.median(t.inverse) * 1e3:.1f}",
            f"{total * 1e3:.1f}", f"{bench.seconds / total:.0f}", rel, f"{total / bench.bound_s:.1f}",
        )
    table.caption = ("throughput vs torch: torch's time / this backend's time (higher is faster); "
                     "x bound: time / memory-bandwidth bound")
    console.print(table)
    numpy_t = next((t for t in bench.timings if t.label == "numpy" and t.forward), None)
    if torch_t is not None and numpy_t is not None:
        ratio = numpy_t.total / torch_t.total
        verdict = "meets" if ratio <= 2.0 else "MISSES"
        console.print(f"numpy takes {ratio:.2f}x torch's time: {verdict} the target (within 2x of torch on CPU)", highlight=False)
    if parity_rows:
        ptable = Table(title="parity vs the exact (float64) Demucs-convention STFT, 1 s stereo")
        for col in ("backend", "signal", "spec max |diff|", "spec SNR dB", "round trip max |diff|", "round trip SNR dB"):
            ptable.add_column(col, justify="left" if col in ("backend", "signal") else "right")
        for r in parity_rows:
            ptable.add_row(escape(r["backend"]), r["signal"], f"{r['spec_max_abs_diff']:.2e}", _fmt_db(r["spec_snr_db"]),
                           f"{r['rt_max_abs_diff']:.2e}", _fmt_db(r["rt_snr_db"]))
        ptable.caption = "round trip: istft(stft(x)) vs demucs's own _ispec(_spec(x)) in float64 (not an identity)"
        console.print(ptable)


@handle_errors
def command(
    seconds: float = typer.Option(60.0, "--seconds", min=0.1, help="length of the stereo test clip"),
    repeats: int = typer.Option(5, "--repeats", min=1, help="interleaved timing rounds (the median is shown)"),
    backends: list[str] = typer.Option(None, "--stft", help="backend name (repeatable); default: every registered one"),
    parity_: bool = typer.Option(True, "--parity/--no-parity", help="also print parity vs the exact Demucs STFT"),
) -> None:
    """Forward + inverse STFT per backend: throughput relative to torch and to the memory-bandwidth bound."""
    reg = load_registry()
    names = backends or reg.names("stft")
    if "torch" in names:  # the reference row first
        names = ["torch", *(n for n in names if n != "torch")]
    plugins = [reg.create("stft", n) for n in names]
    err().print(f"timing {', '.join(names)} on {seconds:g} s of stereo audio ...", highlight=False)
    result = run(plugins, seconds=seconds, repeats=repeats)
    rows = parity(plugins) if parity_ else None
    print_report(out(), result, rows)
