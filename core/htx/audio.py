"""Audio I/O and conversion to the model's format (the one place that reads and writes audio)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a directory; pass an audio file (WAV or FLAC)")
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


def check_finite(data: np.ndarray, what: str) -> None:
    if not np.isfinite(data).all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        raise AudioError(f"{what} has non-finite samples ({n_nan} NaN, {n_inf} Inf); fix or re-export the audio")


def write_audio(path: str | Path, data: np.ndarray, samplerate: int, subtype: str | None = None) -> Path:
    """Write float ``[C, L]`` audio; the format follows the suffix (.wav float32 by default, .flac 24-bit)."""
    import soundfile as sf

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
