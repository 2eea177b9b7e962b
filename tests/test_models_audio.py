from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from htx.audio import read_audio, to_model_format, write_audio
from htx.config import FixtureEntry, ModelConfig
from htx.errors import AudioError, ModelError
from htx.fixtures import load_fixture
from htx.models import (
    load_checkpoint,
    load_model,
    model_hash,
    random_htdemucs,
    save_checkpoint,
    save_safetensors,
)

KW = dict(channels=8, depth=4, t_layers=1, segment=1)


@pytest.fixture(scope="module")
def tiny():
    return random_htdemucs(3, **KW)


def test_th_and_safetensors_round_trip(tiny, tmp_path):
    from demucs.states import load_model as demucs_load

    th = save_checkpoint(tiny, tmp_path / "tiny.th")
    st = save_safetensors(tiny, tmp_path / "tiny.safetensors")
    h = model_hash(tiny)
    for path in (th, st):
        loaded = load_model(ModelConfig.model_validate({"path": str(path)}))
        assert loaded.hash == h, path
        assert loaded.segment_length == 44100 and loaded.sources == ["drums", "bass", "other", "vocals"]
    assert model_hash(demucs_load(str(th))) == h  # demucs's own loader reads what htx writes


def test_nan_weights_rejected(tiny, tmp_path):
    bad = random_htdemucs(3, **KW)
    with torch.no_grad():
        next(bad.parameters())[0].fill_(float("nan"))
    path = save_checkpoint(bad, tmp_path / "bad.th")
    with pytest.raises(ModelError, match=r"non-finite weights: .*NaN.*use another checkpoint"):
        load_checkpoint(path)


def test_bad_checkpoint_files(tmp_path):
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load .*junk.th as a demucs checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(ModelError, match="model file not found"):
        load_checkpoint(tmp_path / "missing.th")


def test_pretrained_offline_names_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import demucs.pretrained

    def offline(name, repo=None):
        raise OSError("We have no connection or you passed local_files_only")

    monkeypatch.setattr(demucs.pretrained, "get_model", offline)
    with pytest.raises(ModelError, match=r"cannot load pretrained 'htdemucs'.*HuggingFace cache .*hub.*torch hub cache"):
        load_model(ModelConfig.model_validate({"pretrained": "htdemucs"}))


def test_demo_model_loads():
    loaded = load_model(ModelConfig.model_validate("demo"))
    assert loaded.model.samplerate == 44100 and len(loaded.sources) == 4
    assert loaded.source.startswith("demo")


def _fixture(path, sr=44100, ch=2, n=44100):
    return load_fixture(FixtureEntry.model_validate(str(path)), sr, ch, n)


def test_audio_conversions(tmp_path):
    t = np.arange(48000) / 48000
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    write_audio(tmp_path / "mono48k.wav", mono, 48000)
    fx = _fixture(tmp_path / "mono48k.wav")
    assert fx.mix.shape == (2, 44100)
    assert fx.notes == ["mono duplicated to 2 channels", "resampled from 48000 Hz to 44100 Hz"]
    assert np.allclose(fx.mix[0], fx.mix[1])
    # the resampled sine keeps its amplitude away from the edges
    assert abs(np.abs(fx.mix[0, 2000:-2000]).max() - 0.3) < 0.01
    six = np.zeros((6, 1000), dtype=np.float32)
    write_audio(tmp_path / "six.wav", six, 44100)
    with pytest.raises(AudioError, match="has 6 channels but the model takes 2; downmix it first"):
        _fixture(tmp_path / "six.wav")


def test_bad_audio_files(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), dtype=np.float32), 44100)
    with pytest.raises(AudioError, match="contains no samples"):
        read_audio(empty)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + b"\x00" * 20)
    with pytest.raises(AudioError, match="cannot read .*corrupt.flac as audio"):
        read_audio(corrupt)
    text = tmp_path / "notes.wav"
    text.write_text("hello")
    with pytest.raises(AudioError, match="cannot read"):
        read_audio(text)
    nan = np.full((2, 100), np.nan, dtype=np.float32)
    sf.write(str(tmp_path / "nan.wav"), nan.T, 44100, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite samples"):
        read_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "nope.wav")


def test_flac_round_trip(tmp_path):
    x = (np.random.default_rng(0).standard_normal((2, 2000)) * 0.1).astype(np.float32)
    write_audio(tmp_path / "x.flac", x, 44100)
    a = to_model_format(read_audio(tmp_path / "x.flac"), 44100, 2)
    assert np.abs(a.data - x).max() < 2**-22
