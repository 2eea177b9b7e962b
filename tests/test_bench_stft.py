"""``htx bench stft`` runs and reports every backend relative to torch and to the bandwidth bound (no timing asserts)."""

from __future__ import annotations

import platform

from typer.testing import CliRunner

from htx.cli import app
from htx_plugins.stft.bench import round_trip_bytes


def test_round_trip_bytes():
    nbytes, frames = round_trip_bytes(2, 44100 * 60)
    assert frames == 2584
    assert nbytes == 2 * (2 * 44100 * 60 * 4) + 2 * (2 * 2048 * 2584 * 8)


def test_bench_stft_command_reports_each_backend():
    res = CliRunner().invoke(app, ["bench", "stft", "--seconds", "1", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "memory-bandwidth bound:" in out and "GB/s measured copy bandwidth" in out
    timing = out.split("parity vs")[0]
    lines = {line.split("│")[1].strip(): line for line in timing.splitlines() if line.startswith("│")}
    vdsp = "vdsp" if platform.system() == "Darwin" else "vdsp (emulated)"
    for name in ("torch", "numpy", vdsp):
        assert name in lines, out
    assert "1.00x" in lines["torch"]
    assert "numpy takes" in out and "x torch's time" in out
    assert "parity vs the exact (float64) Demucs-convention STFT" in out and "chirp" in out


def test_bench_stft_unknown_backend_is_a_clear_error():
    res = CliRunner().invoke(app, ["bench", "stft", "--stft", "nump", "--seconds", "1"])
    assert res.exit_code == 1
    assert "stft: unknown plugin 'nump'. Did you mean 'numpy'?" in res.output
