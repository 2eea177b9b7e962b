"""Audio I/O and conversion to the model's format (the one place that reads and writes audio)."""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from htx.errors import AudioError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


@dataclass
class Audio:
    """Audio as float32 ``[channels, samples]`` plus what was done to it on the way in."""

    data: np.ndarray
    samplerate: int
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def length(self) -> int:
        return int(self.data.shape[-1])

    @property
    def duration(self) -> float:
        return self.length / self.samplerate


def read_audio(path: str | Path) -> Audio:
    """Read a WAV/FLAC/OGG file as float32 ``[C, L]``; empty, corrupt or non-finite audio is an error."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise AudioError(problem)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(
            f"cannot read {path} as audio ({exc}). htx reads WAV, FLAC and OGG files; convert the file "
            "(e.g. `ffmpeg -i in.mp3 out.wav`) or check that it is not truncated."
        ) from None
    if data.size == 0 or data.shape[0] == 0:
        raise AudioError(f"{path} contains no samples; use a non-empty recording")
    data = np.ascontiguousarray(data.T)
    check_finite(data, str(path))
    return Audio(data=data, samplerate=int(sr))


def audio_file_problem(path: str | Path, channels: int | None = None) -> str | None:
    """What makes ``path`` unusable as a fixture, read cheaply (header, then the samples in blocks), or None.

    Reports: missing, a directory, empty (0 bytes or no samples), undecodable, truncated (fewer samples than
    the header declares, or a read error part-way), non-finite samples, and, with ``channels`` (the model's),
    a channel count other than mono or ``channels``.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        return problem
    try:
        info = sf.info(str(path))
    except Exception as exc:
        return (f"{path} is not a readable audio file ({str(exc).strip() or type(exc).__name__}); htx reads WAV, FLAC and "
                "OGG: convert it (e.g. `ffmpeg -i in.mp3 out.wav`)")
    if info.frames == 0:
        return f"{path} contains no samples; use a non-empty recording"
    if channels is not None and info.channels not in (1, channels):
        return (f"{path} has {info.channels} channels; the model takes {channels} (or mono, which is duplicated): "
                f"downmix it, e.g. `ffmpeg -i {path.name} -ac {channels} out.wav`")
    frames, bad = 0, 0
    try:
        for block in sf.blocks(str(path), blocksize=1 << 16, dtype="float32", always_2d=True):
            frames += block.shape[0]
            bad += int((~np.isfinite(block)).sum())
    except Exception as exc:
        return f"{path} is truncated or corrupt: reading failed after {frames} of {info.frames} frames ({exc})"
    if frames < info.frames:
        return f"{path} is truncated: the header declares {info.frames} frames, {frames} can be read; re-export it"
    if bad:
        return f"{path} has {bad} non-finite samples (NaN/Inf); fix or re-export the audio"
    return None


def file_problem(path: Path) -> str | None:
    """What is wrong with ``path`` before any sample is decoded: not a regular file, empty, or a WAV whose
    header declares more samples than it holds; None when none of these."""
    kind = not_a_file(path)
    if kind:
        return kind
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes); use a non-empty recording"
    return wav_data_shortfall(path)


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it is no regular file (missing, a folder, a FIFO, a device, a symlink loop), or None."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return f"{path} is a symbolic link loop; point it at an audio file"
        except OSError:
            return f"{path} is a broken symbolic link (its target does not exist)"
    if not path.exists():
        return f"audio file not found: {path}"
    if path.is_dir():
        return f"{path} is a directory; pass an audio file (WAV or FLAC)"
    mode = path.stat().st_mode
    for test, what in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"{path} is {what}, not an audio file; pass a WAV or FLAC file"
    return None


def wav_data_shortfall(path: Path) -> str | None:
    """A WAV whose ``data`` chunk declares more bytes than the file holds (a cut-off download, a lying header):
    libsndfile reads what is there without a word, so the header is checked here."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    held = size - f.tell()
                    if n not in (0, 0xFFFFFFFF) and n > held:
                        return (f"{path} is truncated: its WAV header declares {n} bytes of samples, the file holds "
                                f"{held}; re-export or download it again")
                    return None
                f.seek(n + (n & 1), 1)
    except OSError:
        return None


def check_finite(data: np.ndarray, what: str) -> None:
    if not np.isfinite(data).all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        raise AudioError(f"{what} has non-finite samples ({n_nan} NaN, {n_inf} Inf); fix or re-export the audio")


def write_audio(path: str | Path, data: np.ndarray, samplerate: int, subtype: str | None = None) -> Path:
    """Write float ``[C, L]`` audio; the format follows the suffix (.wav float32 by default, .flac 24-bit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data, dtype=np.float32)
    if path.suffix.lower() == ".flac":
        subtype = subtype or "PCM_24"
        data = np.clip(data, -1.0, 1.0 - 2.0**-23)
    else:
        subtype = subtype or "FLOAT"
    sf.write(str(path), data.T, samplerate, subtype=subtype)
    return path


def resample(data: np.ndarray, old_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling with julius (demucs's own resampler)."""
    import julius
    import torch

    if old_sr == new_sr:
        return data
    out = julius.resample_frac(torch.from_numpy(np.ascontiguousarray(data)), old_sr, new_sr)
    return out.numpy().astype(np.float32)


def to_model_format(audio: Audio, samplerate: int, channels: int, what: str = "audio") -> Audio:
    """Resample and match the channel count (mono is duplicated; more channels than the model is an error)."""
    data = audio.data
    notes = list(audio.notes)
    if data.shape[0] != channels:
        if data.shape[0] == 1:
            data = np.repeat(data, channels, axis=0)
            notes.append(f"mono duplicated to {channels} channels")
        else:
            raise AudioError(
                f"{what} has {data.shape[0]} channels but the model takes {channels}; downmix it first "
                f"(e.g. `ffmpeg -i in.wav -ac {channels} out.wav`)"
            )
    if audio.samplerate != samplerate:
        data = resample(data, audio.samplerate, samplerate)
        notes.append(f"resampled from {audio.samplerate} Hz to {samplerate} Hz")
    if data.shape[-1] == 0:
        raise AudioError(f"{what} is empty after conversion")
    return Audio(data=np.ascontiguousarray(data, dtype=np.float32), samplerate=samplerate, notes=notes)
