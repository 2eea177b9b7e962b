"""Separate any audio with one surgery x precision x STFT x compute combination of a config.

This is what ``htx separate`` runs: the same pipeline a trial runs (built by the trial builder,
:meth:`htx.builder.TrialBuilder.pipeline_for`), applied segment by segment to the user's audio, so what a
user hears is exactly what the leaderboard measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from htx.audio import Audio, read_audio, resample, to_model_format, write_audio
from htx.axes import axis_names
from htx.builder import TrialBuilder
from htx.config import ExperimentConfig, PluginEntry, check_plugins
from htx.errors import ConfigError, HtxError
from htx.grid import expand_grid
from htx.measure import separate_mix
from htx.plugins import Registry
from htx.separation import TRANSITIONS
from htx.workspace import Workspace


def parse_entry(value: str, axis: str) -> PluginEntry:
    """A command-line plugin choice: a bare name (``all-fp16``) or a YAML mapping (``{curated-fp32: {ops: [softmax]}}``)."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"--{axis} {value!r}: not valid YAML ({exc}); write a name or {{name: {{option: value}}}}"]) from None
    else:
        data = text
    try:
        return PluginEntry.model_validate(data)
    except Exception as exc:
        raise ConfigError([f"--{axis} {value!r}: {exc}"]) from None


def choose(cfg: ExperimentConfig, overrides: dict[str, str | None], say: Callable[[str], None] | None = None) -> ExperimentConfig:
    """The config narrowed to one plugin per axis: the override, else the config's first entry (as
    ``htx convert`` does); ``say`` is told which entry was taken where the config lists several."""
    update: dict[str, Any] = {}
    for axis in axis_names():
        value = overrides.get(axis)
        if value is not None:
            update[axis] = [parse_entry(value, axis)]
            continue
        entries = cfg.entries(axis)
        if len(entries) > 1:
            update[axis] = entries[:1]
            if say is not None:
                others = ", ".join(e.key() for e in entries[1:])
                say(f"{axis}: using the config's first entry {entries[0].key()} (also listed: {others}; pick one with --{axis})")
    return cfg.model_copy(update=update)


@dataclass
class SeparationResult:
    """Stems ``[S, C, L]`` at the input's rate and channel count, with what was done on the way."""

    stems: np.ndarray
    stem_names: list[str]
    samplerate: int
    combination: str
    model_source: str
    notes: list[str] = field(default_factory=list)
    nonfinite: int = 0


class Separator:
    """One combination of a config, built once, that separates audio arrays or files.

    Example::

        sep = Separator(cfg, registry, precision="all-fp16")
        result = sep.separate_file("song.wav")
        sep.write(result, "out/", fmt="flac")
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        registry: Registry,
        surgery: str | None = None,
        precision: str | None = None,
        stft: str | None = None,
        compute: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        cfg = choose(cfg, {"surgery": surgery, "precision": precision, "stft": stft, "compute": compute}, say)
        problems = check_plugins(cfg, registry)
        if problems:
            raise ConfigError(problems)
        self.cfg = cfg
        self.say = say or (lambda msg: None)
        # check_plugins checked the surgeries on the model's skeleton (or path models when they load below).
        self.workspace = Workspace(cfg, registry, self.say, check_surgeries=cfg.model.kind in ("path", "pretrained"))
        self.builder = TrialBuilder(self.workspace, registry)
        self.loaded = self.workspace.model
        self.spec = expand_grid(cfg)[0]
        if self.builder.is_search(self.spec):
            # A search policy calibrates on the config's fixtures, exactly as in `htx run`.
            self.say(f"{self.spec.precision.key()} searches on the config's fixtures first ...")
            self.workspace.load()
        self.pipe, self.prep, self.ainfo = self.builder.pipeline_for(self.spec)
        s = self.spec
        self.combination = f"{s.surgery.key()} x {s.precision.key()} x {s.stft.key()} x {s.compute.key()}"

    @property
    def samplerate(self) -> int:
        return self.loaded.samplerate

    @property
    def sources(self) -> list[str]:
        return self.loaded.sources

    def separate_audio(
        self, audio: Audio, progress: Callable[[int, int], None] | None = None,
        transition: str = "demucs", crossfade_s: float = 1.0, what: str = "input",
    ) -> SeparationResult:
        """Separate ``audio`` (any rate, mono or the model's channel count); stems come back in its format."""
        if transition not in TRANSITIONS:
            raise HtxError(f"unknown transition {transition!r}; use one of {', '.join(TRANSITIONS)}")
        crossfade = None
        if transition == "linear":
            crossfade = int(round(crossfade_s * self.samplerate))
            if not 0 < crossfade < self.loaded.segment_length:
                raise HtxError(
                    f"crossfade {crossfade_s:g} s must be shorter than the model segment "
                    f"({self.loaded.segment_length / self.samplerate:g} s) and longer than zero"
                )
        model_in = to_model_format(audio, self.samplerate, self.loaded.model.audio_channels, what)
        stems = separate_mix(self.pipe, model_in.data, self.builder.segmenting, progress, transition, crossfade)
        nonfinite = int((~np.isfinite(stems)).sum())
        notes = list(model_in.notes)
        if audio.samplerate != self.samplerate:
            stems = np.stack([resample(s, self.samplerate, audio.samplerate) for s in stems])
            notes.append(f"stems resampled back to {audio.samplerate} Hz")
        stems = _fit_length(stems, audio.length)
        if audio.channels == 1 and stems.shape[1] != 1:
            stems = stems.mean(axis=1, keepdims=True)
            notes.append("stems averaged back to mono")
        return SeparationResult(
            stems.astype(np.float32), self.sources, audio.samplerate, self.combination, self.loaded.source, notes, nonfinite,
        )

    def separate_file(self, path: str | Path, **kwargs: Any) -> SeparationResult:
        return self.separate_audio(read_audio(path), what=str(path), **kwargs)

    @staticmethod
    def write(result: SeparationResult, out_dir: str | Path, fmt: str = "wav") -> list[Path]:
        """One file per stem: ``<out_dir>/<stem>.wav`` (float32) or ``.flac`` (24-bit). Non-finite samples become 0."""
        if fmt not in ("wav", "flac"):
            raise HtxError(f"unknown format {fmt!r}; use wav or flac")
        paths = []
        for name, data in zip(result.stem_names, result.stems):
            clean = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
            paths.append(write_audio(Path(out_dir) / f"{name}.{fmt}", clean, result.samplerate))
        return paths


def _fit_length(x: np.ndarray, length: int) -> np.ndarray:
    if x.shape[-1] >= length:
        return x[..., :length]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])])
