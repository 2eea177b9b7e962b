"""Chunked separation vs demucs's apply_model, the linear crossfade, and `htx separate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from htx.audio import read_audio
from htx.cli import app
from htx.config import ExperimentConfig
from htx.models import REPO_ROOT, SOURCES, load_checkpoint
from htx.plugins import load_registry
from htx.separation import linear_weight, separate
from htx.separator import Separator

SR = 44100
MUSIC = REPO_ROOT / "fixtures" / "music"
CKPT = REPO_ROOT / "fixtures" / "demo" / "htdemucs_demo.th"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_checkpoint(CKPT)


def _mix(length: int) -> np.ndarray:
    return read_audio(MUSIC / "music_c.flac").data[:, :length]


def _apply_model(model: torch.nn.Module, mix: np.ndarray) -> np.ndarray:
    from demucs.apply import apply_model

    with torch.no_grad():
        return apply_model(model, torch.from_numpy(mix)[None], shifts=0, split=True, overlap=0.25, progress=False)[0].numpy()


# 3.2 s + 17 samples: three segments, and not a multiple of the 66150-sample stride; 0.7 s: one padded segment.
@pytest.mark.parametrize("length", [int(3.2 * SR) + 17, int(0.7 * SR)])
def test_chunked_separation_matches_apply_model(model: torch.nn.Module, length: int) -> None:
    mix = _mix(length)
    assert length % int(0.75 * 2 * SR) != 0
    with torch.no_grad():
        ours = separate(model, torch.from_numpy(mix), 2 * SR, 4, overlap=0.25).numpy()
    ref = _apply_model(model, mix)
    assert ours.shape == ref.shape == (4, 2, length)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_separator_pipeline_fp32_matches_apply_model(model: torch.nn.Module) -> None:
    """`htx separate`'s pipeline (full-hybrid surgery, torch STFT, torch compute, fp32) is demucs's output."""
    length = int(2.6 * SR) + 5
    mix = _mix(length)
    cfg = ExperimentConfig.model_validate({
        "name": "sep", "model": "demo", "fixtures": ["silence"], "compute": [{"torch": {"device": "cpu"}}],
    })
    sep = Separator(cfg, load_registry())
    assert sep.combination == "full-hybrid x fp32 x torch x torch[device='cpu']"
    from htx.audio import Audio

    calls = []
    result = sep.separate_audio(Audio(mix, SR), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2)
    np.testing.assert_allclose(result.stems, _apply_model(model, mix), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transition", ["demucs", "linear"])
def test_overlap_add_weights_reconstruct_the_input(transition: str) -> None:
    """With a per-segment identity, any transition must give back the input exactly."""
    x = torch.randn(2, 5 * 4410 + 123, generator=torch.Generator().manual_seed(0))
    calls = []

    def ident(chunks: torch.Tensor) -> torch.Tensor:
        calls.append(chunks.shape[0])
        return chunks[:, None].repeat(1, 3, 1, 1)

    out = separate(ident, x, 8820, 3, transition=transition, crossfade_length=4410, batch_size=2)
    torch.testing.assert_close(out, x[None].expand(3, -1, -1), rtol=1e-6, atol=1e-6)
    # linear: stride = segment - crossfade = 4410 samples -> 6 segments; demucs: stride 6615 -> 4 segments
    assert sum(calls) == (6 if transition == "linear" else 4)


def test_linear_weight_crossfades_sum_to_one() -> None:
    w = linear_weight(10, 4)
    assert torch.all(w > 0) and torch.all(w[4:6] == 1)
    torch.testing.assert_close(w[6:] + w[:4], torch.ones(4))
    with pytest.raises(ValueError):
        linear_weight(10, 10)


def _write(path: Path, data: np.ndarray, sr: int) -> Path:
    sf.write(str(path), data.T, sr, subtype="FLOAT")
    return path


def test_htx_separate_writes_stems(tmp_path: Path) -> None:
    inp = _write(tmp_path / "clip.wav", _mix(int(2.5 * SR)), SR)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["separate", str(inp), "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"),
                                   "--precision", "fp32", "--stft", "torch", "--out", str(out), "--format", "flac",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "full-hybrid x fp32 x torch x torch[device='cpu']" in res.output
    stems = {}
    for s in SOURCES:
        info = sf.info(str(out / f"{s}.flac"))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 2, int(2.5 * SR), "PCM_24")
        stems[s] = read_audio(out / f"{s}.flac").data
    # the stems explain the mix: their sum is close to the input
    total = sum(stems.values())
    mix = read_audio(inp).data
    assert 10 * np.log10(np.sum(mix**2) / np.sum((mix - total) ** 2)) > 10.0


def test_htx_separate_mono_48k_input(tmp_path: Path) -> None:
    from htx.audio import resample

    mono48 = resample(_mix(int(1.5 * SR)).mean(0, keepdims=True), SR, 48000)
    inp = _write(tmp_path / "mono48k.wav", mono48, 48000)
    res = CliRunner().invoke(app, ["separate", str(inp), "--out", str(tmp_path / "o"), "--transition", "linear",
                                   "--compute", "{torch: {device: cpu}}", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "mono duplicated" in res.output and "resampled from 48000 Hz" in res.output
    for s in SOURCES:
        info = sf.info(str(tmp_path / "o" / f"{s}.wav"))
        assert (info.samplerate, info.channels, info.frames) == (48000, 1, mono48.shape[-1])


def test_htx_separate_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    res = runner.invoke(app, ["separate", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "cannot read" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["separate", str(tmp_path / "missing.wav")])
    assert res.exit_code == 1 and "not found" in res.output
    good = _write(tmp_path / "ok.wav", np.zeros((2, 1000), np.float32), SR)
    res = runner.invoke(app, ["separate", str(good), "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"),
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output  # the first entry of each axis, as htx convert takes it, and says so
    assert "precision: using the config's first entry fp32 (also listed: all-fp16, curated-fp32; pick one with --precision)" in res.output
    assert "stft: using the config's first entry torch" in res.output and (tmp_path / "q" / "vocals.wav").exists()
    res = runner.invoke(app, ["separate", str(good), "--precision", "all-fp61"])
    assert res.exit_code == 1 and "all-fp16" in res.output  # did-you-mean
    res = runner.invoke(app, ["separate", str(good), "--transition", "cosine"])
    assert res.exit_code == 1 and "demucs, linear" in res.output
