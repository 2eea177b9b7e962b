"""Test audio: built-in generated fixtures, shipped clips with true stems, and audio files by path.

Built-ins (deterministic, 44.1 kHz stereo): ``silence``, ``sine_440``, ``white_noise``; options
``duration`` (seconds; default one model segment), ``amplitude`` and ``seed``. Shipped clips are the
``*.flac`` mixes under ``fixtures/music/`` with their stems (``<name>.<stem>.flac``) beside them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from htx.audio import AUDIO_SUFFIXES, Audio, audio_file_problem, read_audio, to_model_format
from htx.errors import AudioError, format_validation_error
from htx.models import REPO_ROOT, SOURCES, fixtures_dir


@dataclass
class Fixture:
    """Audio at the model's rate and channel count, with true stems when known."""

    name: str
    mix: np.ndarray  # [C, L] float32
    samplerate: int
    stems: np.ndarray | None = None  # [S, C, L]
    stem_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.mix.shape[-1] / self.samplerate

    @property
    def hash(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.mix).tobytes())
        h.update(str((self.mix.shape, self.samplerate)).encode())
        return h.hexdigest()[:16]


class FixtureEntry(BaseModel):
    """A built-in or shipped fixture by name (with options), or an audio file by path."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    path: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value} if looks_like_path(value) else {"name": value}
        if isinstance(value, dict) and set(value) - {"name", "path", "params"}:
            if len(value) != 1:
                raise ValueError(f"a fixture is a name, a path or a one-key mapping {{name: {{options}}}}, got {sorted(value)}")
            (name, params), = value.items()
            return {"name": name, "params": params or {}}
        return value

    @model_validator(mode="after")
    def _check(self) -> FixtureEntry:
        if (self.name is None) == (self.path is None):
            raise ValueError("a fixture needs exactly one of `name` or `path`")
        return self

    @property
    def label(self) -> str:
        if self.path is not None:
            return self.name or Path(self.path).stem
        if not self.params:
            return self.name or "?"
        inner = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        return f"{self.name}[{inner}]"


class GenParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration: float | None = Field(None, gt=0, le=600)
    amplitude: float = Field(0.5, ge=0, le=1)
    seed: int = 0


class SineParams(GenParams):
    frequency: float = Field(440.0, gt=0)


def _length(p: GenParams, samplerate: int, default_length: int) -> int:
    return int(round(p.duration * samplerate)) if p.duration else default_length


def _silence(p: GenParams, sr: int, n: int, ch: int) -> np.ndarray:
    return np.zeros((ch, n), dtype=np.float32)


def _sine(p: SineParams, sr: int, n: int, ch: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / sr
    # A small per-channel phase offset keeps the channels distinct (a true stereo signal).
    x = np.stack([p.amplitude * np.sin(2 * np.pi * p.frequency * t + 0.25 * c) for c in range(ch)])
    return x.astype(np.float32)


def _noise(p: GenParams, sr: int, n: int, ch: int) -> np.ndarray:
    rng = np.random.default_rng(p.seed)
    x = rng.standard_normal((ch, n)) * (p.amplitude / 3.0)
    return np.clip(x, -1, 1).astype(np.float32)


BUILTINS: dict[str, tuple[type[GenParams], Callable[..., np.ndarray], str]] = {
    "silence": (GenParams, _silence, "all zeros (the reference is silent, so snr_db is undefined)"),
    "sine_440": (SineParams, _sine, "440 Hz sine, amplitude 0.5"),
    "white_noise": (GenParams, _noise, "Gaussian white noise, seeded"),
}


def music_dir() -> Path:
    return fixtures_dir() / "music"


def shipped_fixtures() -> dict[str, Path]:
    """Shipped mixes by name: ``fixtures/music/<name>.flac`` (stems are ``<name>.<stem>.flac``)."""
    d = music_dir()
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.flac")) if "." not in p.stem}


def fixture_names() -> list[str]:
    return sorted(BUILTINS) + sorted(shipped_fixtures())


def looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix.lower() in AUDIO_SUFFIXES


def check_fixture_entry(entry: Any, channels: int | None = None) -> str | None:
    """A problem with a fixture entry (unknown name, bad options; for a file: missing, a directory, empty,
    undecodable, truncated, non-finite, or a channel count other than mono or the model's ``channels``), or None."""
    if entry.path is not None:
        return audio_file_problem(entry.path, channels)
    if entry.name in BUILTINS:
        params_cls = BUILTINS[entry.name][0]
        try:
            params_cls(**entry.params)
        except ValidationError as exc:
            return f"{entry.name}: " + "; ".join(format_validation_error(exc))
        return None
    if entry.name in shipped_fixtures():
        if entry.params:
            return f"{entry.name}: shipped clips take no options"
        return None
    names = fixture_names()
    close = difflib.get_close_matches(entry.name, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown fixture {entry.name!r}.{hint} Available: {', '.join(names)}; or give a path to a WAV/FLAC file"


def _load_stems(mix_path: Path, samplerate: int, channels: int, length: int) -> tuple[np.ndarray | None, list[str] | None]:
    stems = []
    for s in SOURCES:
        p = mix_path.with_name(f"{mix_path.stem}.{s}.flac")
        if not p.exists():
            return None, None
        a = to_model_format(read_audio(p), samplerate, channels, str(p))
        stems.append(a.data[:, :length])
    return np.stack(stems), list(SOURCES)


def load_fixture(entry: Any, samplerate: int, channels: int, default_length: int) -> Fixture:
    """Materialize a config fixture entry at the model's sample rate and channel count."""
    if entry.path is not None:
        path = Path(entry.path)
        audio = to_model_format(read_audio(path), samplerate, channels, str(path))
        stems, names = _load_stems(path, samplerate, channels, audio.length)
        return Fixture(entry.label, audio.data, samplerate, stems, names, audio.notes)
    if entry.name in BUILTINS:
        params_cls, gen, _ = BUILTINS[entry.name]
        p = params_cls(**entry.params)
        n = _length(p, samplerate, default_length)
        return Fixture(entry.label, gen(p, samplerate, n, channels), samplerate)
    shipped = shipped_fixtures()
    if entry.name in shipped:
        path = shipped[entry.name]
        audio = to_model_format(read_audio(path), samplerate, channels, str(path))
        stems, names = _load_stems(path, samplerate, channels, audio.length)
        return Fixture(entry.name, audio.data, samplerate, stems, names, audio.notes)
    raise AudioError(check_fixture_entry(entry) or f"unknown fixture {entry.name!r}")


def clips_in(directory: Path) -> dict[str, Path]:
    """Mixes in ``directory`` by name: ``<name>.flac`` whose stems are ``<name>.<stem>.flac`` beside them."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.flac")) if "." not in p.stem}


def describe_fixtures(extra_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows for ``htx fixtures list``: name, kind, duration, whether true stems exist.

    ``extra_dir`` adds the clips of a folder (e.g. written by ``htx fixtures make``), usable by path.
    """
    rows: list[dict[str, Any]] = []
    for name, (_, _, desc) in sorted(BUILTINS.items()):
        rows.append({"name": name, "kind": "built-in", "duration_s": None, "stems": False, "description": desc})
    groups = [("shipped", shipped_fixtures())]
    if extra_dir is not None:
        groups.append(("file", clips_in(Path(extra_dir))))
    for kind, clips in groups:
        for name, path in clips.items():
            try:
                info = sf.info(str(path))
                dur = info.frames / info.samplerate
            except Exception:
                dur = None
            has_stems = all(path.with_name(f"{name}.{s}.flac").exists() for s in SOURCES)
            desc = str(path) if kind == "shipped" else f"use by path: {path}"
            rows.append({"name": name, "kind": kind, "duration_s": dur, "stems": has_stems, "description": desc})
    return rows


def load_musicgen() -> Any:
    """The song generator ``fixtures/musicgen.py`` of this checkout (htx-independent, so not a package module)."""
    path = REPO_ROOT / "fixtures" / "musicgen.py"
    if "htx_musicgen" in sys.modules:
        return sys.modules["htx_musicgen"]
    if not path.exists():
        raise AudioError(f"the song generator {path} is missing; `htx fixtures make` needs a source checkout of htx")
    spec = importlib.util.spec_from_file_location("htx_musicgen", path)
    if spec is None or spec.loader is None:
        raise AudioError(f"cannot import the song generator {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["htx_musicgen"] = module  # multiprocessing workers pickle its functions by this name
    spec.loader.exec_module(module)
    return module


__all__ = ["Audio", "Fixture", "load_fixture", "fixture_names", "describe_fixtures", "AudioError"]
