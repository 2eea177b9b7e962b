"""full-hybrid + host-side torch STFT reproduces HTDemucs.forward (rtol 1e-5, atol 1e-7)."""

from __future__ import annotations

import torch

from htx.api import Assignment
from htx.models import random_htdemucs
from htx.pipeline import Pipeline
from htx_plugins.compute.torch_unit import TorchUnit
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.surgery.full_hybrid import FullHybrid


def _parity(model: torch.nn.Module, batch: int = 1) -> tuple[float, bool]:
    length = int(model.segment * model.samplerate)
    gen = torch.Generator().manual_seed(0)
    mix = 0.2 * torch.randn(batch, model.audio_channels, length, generator=gen)
    with torch.no_grad():
        ref = model(mix)
    inner = FullHybrid().build(model)
    unit = TorchUnit(TorchUnit.Params(device="cpu"))
    stft = TorchSTFT()
    from htx.pipeline import spec_to_cac

    prepared = unit.prepare(inner, (spec_to_cac(stft.stft(mix, model.nfft)), mix))
    out = Pipeline(inner, unit.compile(prepared, Assignment.all_fp32()), stft, model.nfft, torch.device("cpu"))(mix)
    diff = (out - ref).abs()
    return float(diff.max()), bool((diff <= 1e-7 + 1e-5 * ref.abs()).all())


def test_full_hybrid_parity_small():
    max_diff, ok = _parity(random_htdemucs(0, channels=8, depth=4, t_layers=1, segment=1), batch=2)
    assert ok, max_diff


def test_full_hybrid_parity_with_bottom_channels():
    max_diff, ok = _parity(random_htdemucs(1, channels=8, depth=4, t_layers=1, segment=1, bottom_channels=16))
    assert ok, max_diff


# The full-size (26.9 M parameters) check of every exact surgery, full-hybrid included, is
# tests/test_surgery.py::test_parity_full_size_all_variants (one full-size reference for all of them).
