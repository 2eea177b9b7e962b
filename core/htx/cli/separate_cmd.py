"""``htx separate INPUT``: separate a recording with one combination of a config and write the stems."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from htx.audio import read_audio
from htx.config import ExperimentConfig, load_config, model_channels
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.fixtures import FixtureEntry
from htx.plugins import load_registry
from htx.separation import TRANSITIONS
from htx.separator import Separator


@handle_errors
def separate(
    input: Path = typer.Argument(..., help="audio to separate (WAV, FLAC or OGG; any sample rate, mono or stereo)"),
    config: Path = typer.Option(None, "--config", "-c", help="experiment config (model, separation settings, axes); default: demo model, full-hybrid, fp32, torch"),
    surgery: str = typer.Option(None, "--surgery", help="surgery to use (needed when the config lists several)"),
    precision: str = typer.Option(None, "--precision", help="precision policy: a name (all-fp16) or a YAML mapping with options, '{name: {option: value}}'"),
    stft: str = typer.Option(None, "--stft", help="STFT backend"),
    compute: str = typer.Option(None, "--compute", help="compute unit, e.g. torch or '{torch: {device: cpu}}'"),
    out_dir: Path = typer.Option(Path("separated"), "--out", "-o", help="folder for the stem files"),
    fmt: str = typer.Option("wav", "--format", help="wav (float32) or flac (24-bit)"),
    transition: str = typer.Option("demucs", "--transition", help="demucs (apply_model's weights and overlap) or linear (crossfade)"),
    crossfade: float = typer.Option(1.0, "--crossfade", help="crossfade in seconds for --transition linear"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Separate INPUT into one file per stem with the pipeline a trial runs (listen to what a policy does)."""
    e = err()
    if fmt not in ("wav", "flac"):
        raise HtxError(f"--format {fmt!r}: use wav or flac")
    if transition not in TRANSITIONS:
        raise HtxError(f"--transition {transition!r}: use one of {', '.join(TRANSITIONS)}")
    audio = read_audio(input)  # fail fast on unreadable input, before any model is built
    registry = load_registry()
    if config is not None:
        cfg = load_config(config, registry)
    else:
        cfg = ExperimentConfig(name="separate", fixtures=[FixtureEntry(path=str(input))])
    channels = model_channels(cfg.model)  # from the architecture: refuse before any model is built
    if channels is not None and audio.channels not in (1, channels):
        raise HtxError(f"{input} has {audio.channels} channels; the model takes {channels} (or mono, which is "
                       f"duplicated): downmix it, e.g. `ffmpeg -i {input.name} -ac {channels} out.wav`")
    t0 = time.perf_counter()
    sep = Separator(cfg, registry, surgery, precision, stft, compute, say=lambda m: e.print(m, highlight=False, markup=False))
    e.print(f"separating {input} ({audio.duration:.1f} s, {audio.channels} ch, {audio.samplerate} Hz) with {sep.combination}",
            highlight=False, markup=False)
    progress = Progress(
        TextColumn("[bold]segments"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=e, transient=False, disable=no_progress,
    )
    with progress:
        task = progress.add_task("", total=None)
        result = sep.separate_audio(
            audio, progress=lambda done, total: progress.update(task, completed=done, total=total),
            transition=transition, crossfade_s=crossfade, what=str(input),
        )
    for note in result.notes:
        e.print(f"note: {note}", highlight=False, markup=False)
    if result.nonfinite:
        e.print(f"[yellow]warning:[/yellow] the output had {result.nonfinite} NaN/Inf samples (written as 0): "
                "this precision policy overflows on this input", highlight=False)
    paths = Separator.write(result, out_dir, fmt)
    o = out()
    for p in paths:
        o.print(str(p), highlight=False, markup=False)
    took = time.perf_counter() - t0
    e.print(f"{len(paths)} stems in {out_dir} in {took:.1f} s (real-time factor {took / audio.duration:.2f})", highlight=False)
