"""The shipped demo checkpoint: loads through demucs and htx, is finite, really separates; bad weights are refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from htx.audio import read_audio
from htx.config import ModelConfig
from htx.errors import ModelError
from htx.metrics import separation_quality
from htx.models import DEMO_KWARGS, REPO_ROOT, SOURCES, demo_checkpoint, load_checkpoint, load_model

CKPT = REPO_ROOT / "fixtures" / "demo" / "htdemucs_demo.th"


@pytest.fixture(scope="module")
def demucs_loaded() -> torch.nn.Module:
    from demucs.states import load_model as demucs_load

    return demucs_load(str(CKPT)).eval()


def test_checkpoint_is_small_and_demucs_loads_it(demucs_loaded: torch.nn.Module) -> None:
    from demucs.htdemucs import HTDemucs

    assert CKPT.stat().st_size < 10 * 2**20
    assert isinstance(demucs_loaded, HTDemucs)
    _, kwargs = demucs_loaded._init_args_kwargs
    # the model card, the random stand-in and the checkpoint describe one architecture
    assert kwargs == DEMO_KWARGS
    for name, t in demucs_loaded.state_dict().items():
        if t.is_floating_point():
            assert t.dtype == torch.float32, name
            assert torch.isfinite(t).all(), name


def test_htx_demo_model_is_the_trained_checkpoint(demucs_loaded: torch.nn.Module) -> None:
    assert demo_checkpoint() == CKPT
    loaded = load_model(ModelConfig.model_validate("demo"))
    assert loaded.source.startswith("demo (trained")
    assert loaded.sources == SOURCES and loaded.samplerate == 44100 and loaded.segment_length == 88200
    ours, theirs = loaded.model.state_dict(), demucs_loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_random_stand_in_has_the_demo_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   demucs_loaded: torch.nn.Module) -> None:
    monkeypatch.setenv("HTX_FIXTURES_DIR", str(tmp_path))  # no checkpoint there
    loaded = load_model(ModelConfig.model_validate("demo"))
    assert "random init" in loaded.source
    shapes = {k: tuple(v.shape) for k, v in loaded.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in demucs_loaded.state_dict().items()}


def test_demo_model_separates_a_shipped_clip(demucs_loaded: torch.nn.Module) -> None:
    """Far above what an untrained model gets (about 0 dB); the card's held-out numbers are higher."""
    from demucs.apply import apply_model

    music = REPO_ROOT / "fixtures" / "music"
    mix = read_audio(music / "music_b.flac").data
    truth = np.stack([read_audio(music / f"music_b.{s}.flac").data for s in SOURCES])
    with torch.no_grad():
        est = apply_model(demucs_loaded, torch.from_numpy(mix)[None], shifts=0, split=True, overlap=0.25,
                          progress=False)[0].numpy()
    q = separation_quality(truth, est, est, SOURCES)
    assert q["sdr_db"] >= 8.0, q
    for s in SOURCES:
        assert q[f"sdr_db.{s}"] >= 4.0, q


def test_training_log_reports_the_target() -> None:
    log = json.loads((REPO_ROOT / "fixtures" / "demo" / "train_log.json").read_text())
    full = log["valid_full_songs"]
    assert full["n_songs"] >= 32 and full["sdr_mean"] >= 8.0
    assert set(full["sdr_per_stem"]) == set(SOURCES)
    assert log["model_kwargs"] == {**DEMO_KWARGS}
    curve = [e["valid_sdr"]["mean"] for e in log["evals"]]
    assert curve[-1] > curve[0] + 5.0  # it learned


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_checkpoint_with_non_finite_weights_is_rejected(tmp_path: Path, bad: float) -> None:
    package = torch.load(CKPT, "cpu", weights_only=False)
    name = "crosstransformer.layers.0.norm1.weight"
    package["state"][name] = package["state"][name].clone()
    package["state"][name][3] = bad
    path = tmp_path / "broken.th"
    torch.save(package, path)
    with pytest.raises(ModelError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "non-finite weights" in msg and name in msg and "use another checkpoint" in msg
    with pytest.raises(ModelError, match="non-finite"):
        load_model(ModelConfig.model_validate({"path": str(path)}))
