"""The song generator (fixtures/musicgen.py), the shipped music clips and `htx fixtures make`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from htx.audio import read_audio
from htx.cli import app
from htx.fixtures import describe_fixtures, load_musicgen
from htx.models import REPO_ROOT, SOURCES

mg = load_musicgen()
MUSIC = REPO_ROOT / "fixtures" / "music"


def test_generator_is_deterministic_per_seed() -> None:
    a = mg.generate_song(5_000_123, duration=2.0)
    b = mg.generate_song(5_000_123, duration=2.0)
    c = mg.generate_song(5_000_124, duration=2.0)
    assert a.stems.shape == (4, 2, 88200) and a.stems.dtype == np.float32
    assert np.array_equal(a.stems, b.stems)
    assert a.meta == b.meta
    assert not np.allclose(a.stems, c.stems)


def test_song_has_four_audible_stereo_stems_that_sum_to_the_mix() -> None:
    song = mg.generate_song(5_000_200, duration=3.0)
    assert list(mg.STEMS) == SOURCES
    rms = np.sqrt(np.mean(song.stems.astype(np.float64) ** 2, axis=(1, 2)))
    assert (rms > 1e-3).all(), rms  # every stem is present
    assert np.abs(song.mix).max() < 1.0
    np.testing.assert_array_equal(song.mix, song.stems.sum(axis=0))
    # true stereo: panning makes left and right differ for at least one stem
    assert any(not np.allclose(s[0], s[1]) for s in song.stems)


def test_written_flac_stems_sum_exactly_to_the_written_mix(tmp_path: Path) -> None:
    song = mg.generate_song(5_000_300, duration=1.5)
    mg.write_song(song, tmp_path, "clip")
    mix = read_audio(tmp_path / "clip.flac")
    stems = np.stack([read_audio(tmp_path / f"clip.{s}.flac").data for s in SOURCES])
    assert mix.samplerate == 44100 and mix.data.shape == (2, 66150)
    np.testing.assert_array_equal(mix.data, stems.sum(axis=0))
    # 16-bit stems: within one quantization step of the float stems
    assert np.abs(stems - song.stems).max() <= 1.0 / 32768 + 1e-9


def test_shipped_clips_are_regenerated_from_their_seeds() -> None:
    """music_a is what the committed generator makes from its seed (up to one LSB of float noise)."""
    song = mg.generate_song(mg.SHIPPED["music_a"], duration=8.0)
    stems16, _ = mg.quantize_song(song)
    shipped = np.stack([read_audio(MUSIC / f"music_a.{s}.flac").data for s in SOURCES])
    assert shipped.shape == (4, 2, 8 * 44100)
    assert np.abs(shipped - stems16.transpose(0, 2, 1) / 32768.0).max() <= 2.0 / 32768


@pytest.mark.parametrize("name", sorted(mg.SHIPPED))
def test_shipped_clip_mix_equals_sum_of_its_stems(name: str) -> None:
    mix = read_audio(MUSIC / f"{name}.flac")
    stems = np.stack([read_audio(MUSIC / f"{name}.{s}.flac").data for s in SOURCES])
    assert mix.duration == pytest.approx(8.0)
    np.testing.assert_array_equal(mix.data, stems.sum(axis=0))


def test_seed_ranges_are_disjoint_and_training_stayed_in_its_range() -> None:
    shipped = set(mg.SHIPPED.values())
    assert all(mg.seed_role(s) == "shipped" for s in shipped)
    assert not any(s in mg.TRAIN_SEEDS for s in shipped)
    log = json.loads((REPO_ROOT / "fixtures" / "demo" / "train_log.json").read_text())
    lo, hi = log["seed_ranges"]["train"]
    assert mg.seed_role(lo) == "training" and mg.seed_role(hi - 1) == "training"
    vlo, vhi = log["seed_ranges"]["valid"]
    assert mg.seed_role(vlo) == "validation" and mg.seed_role(vhi - 1) == "validation"
    assert mg.seed_role(5_000_000) is None


def test_fixtures_make_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "songs"
    res = runner.invoke(app, ["fixtures", "make", "--n", "2", "--seed", "5000500", "--out", str(out),
                              "--duration", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    for seed in (5000500, 5000501):
        for suffix in [""] + [f".{s}" for s in SOURCES]:
            assert (out / f"song_{seed}{suffix}.flac").exists()
    rows = {r["name"]: r for r in describe_fixtures(out)}
    assert rows["song_5000500"]["stems"] and rows["song_5000500"]["duration_s"] == pytest.approx(1.0)
    assert rows["music_a"]["kind"] == "shipped" and rows["music_a"]["stems"]
    res = runner.invoke(app, ["fixtures", "list", "--dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "song_5000501" in res.output and "music_d" in res.output and "8.0 s" in res.output


def test_fixtures_make_warns_about_training_seeds(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["fixtures", "make", "--n", "1", "--seed", "12", "--out", str(tmp_path),
                                   "--duration", "0.5", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "training seed range" in res.output
