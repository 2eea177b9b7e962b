"""STFT backends end to end: a grid through the runner (full-hybrid, FP32) against demucs's own forward pass.

One run covers every built-in backend, an ``unavailable`` backend (an inline plugin that never runs, and
``vdsp`` with ``mode: native`` off macOS) and the leaderboard's ``(emulated)`` mark.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_config
from htx.api import STFTBackend
from htx.cli import app
from htx.config import load_config, parse_config
from htx.leaderboard import collect
from htx.plugins import build_registry, get_plugin_manager, module_plugin
from htx.run import Run
from htx.store import Store

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = [{"sine_440": {"duration": 1.3}}, {"white_noise": {"duration": 1.0}}]  # 1.3 s: two segments
BACKENDS = ["torch", "numpy", "vdsp"]


class NeverSTFT(STFTBackend):
    """An STFT backend that cannot run anywhere (tests the ``unavailable`` path)."""

    name = "never-stft"

    def available(self):
        return False, "needs a DSP chip this machine lacks"

    def stft(self, x, n_fft=4096):  # pragma: no cover - never called
        raise AssertionError("an unavailable backend must not be called")

    def istft(self, z, length, n_fft=4096):  # pragma: no cover - never called
        raise AssertionError("an unavailable backend must not be called")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stft_grid")
    plugin = module_plugin("test_stft_never", htx_register_stft_backends=lambda register: register(NeverSTFT))
    registry = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    stft = [*BACKENDS, {"vdsp": {"mode": "native"}}, "never-stft"]
    cfg = parse_config(make_config(tmp, fixtures=FIXTURES, stft=stft), registry=registry)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, registry, store).execute()
        trials = {(t.stft, t.fixture): t for t in store.trials([run_id])}
        rows = collect(store, run=run_id)
    return tmp, run_id, trials, rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", ["sine_440[duration=1.3]", "white_noise[duration=1.0]"])
def test_full_hybrid_with_each_backend_matches_reference(grid, backend, fixture):
    _, _, trials, _ = grid
    t = trials[(backend, fixture)]
    assert t.status == "ok", t.reason
    assert t.metrics["snr_db"] > 60, t.metrics["snr_db"]
    assert t.metrics["nan_count"] == 0 and t.metrics["inf_count"] == 0
    assert t.metrics["stft_ms"] > 0 and t.metrics["istft_ms"] > 0


def test_unavailable_backend_gives_unavailable_rows_not_a_crash(grid):
    _, _, trials, _ = grid
    for fixture in ("sine_440[duration=1.3]", "white_noise[duration=1.0]"):
        t = trials[("never-stft", fixture)]
        assert t.status == "unavailable"
        assert t.reason == "unavailable: stft never-stft: needs a DSP chip this machine lacks"


def test_vdsp_is_marked_emulated_off_macos(grid):
    _, _, trials, rows = grid
    native = trials[("vdsp[mode='native']", "sine_440[duration=1.3]")]
    auto = trials[("vdsp", "sine_440[duration=1.3]")]
    if platform.system() == "Darwin":
        assert native.status == "ok" and native.info["stft_emulated"] is False
        assert auto.info["stft_emulated"] is False
        return
    assert native.status == "unavailable" and "exists only on macOS" in native.reason
    assert auto.info["stft_emulated"] is True and trials[("numpy", "sine_440[duration=1.3]")].info["stft_emulated"] is False
    shown = {r["stft"] for r in rows}
    assert "vdsp (emulated)" in shown and "numpy" in shown and "vdsp" not in shown


def test_leaderboard_cli_shows_emulated_stft(grid):
    tmp, run_id, _, _ = grid
    res = CliRunner().invoke(app, ["leaderboard", "--db", str(tmp / "htx.sqlite"), "--run", run_id, "--format", "json"])
    assert res.exit_code == 0, res.output
    stfts = {r["stft"] for r in json.loads(res.output)}
    expected = "vdsp" if platform.system() == "Darwin" else "vdsp (emulated)"
    assert expected in stfts and "torch" in stfts


def test_quickstart_lists_all_three_backends():
    registry = build_registry(get_plugin_manager())
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", registry=registry)
    assert [e.name for e in cfg.stft] == ["torch", "numpy", "vdsp"]
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert raw["stft"] == ["torch", "numpy", "vdsp"]
