"""Shared fixtures: a tiny HTDemucs config, temporary stores and config files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

# Keep the suite quiet and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_MODEL: dict[str, Any] = {"random": {"channels": 8, "depth": 4, "t_layers": 1, "segment": 1, "seed": 0}}

#: The session's Core ML conversion cache: a ``cache_dir`` (set by ``_one_conversion_cache``). Conversions are
#: keyed by content (model, input shapes, target) and one of the tiny model takes about 10 s, so each
#: ``make_config`` store links its ``cache/coreml`` to this one's and the tiny model converts once, not in every
#: test. Tests of the cache itself give their unit a ``cache_dir`` of their own.
SHARED_CONVERSIONS: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _one_conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("conversions")
    (root / "coreml").mkdir()
    SHARED_CONVERSIONS[:] = [root]


def make_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "test",
        "model": TINY_MODEL,
        "fixtures": [{"sine_440": {"duration": 1.0}}],
        "surgery": ["full-hybrid"],
        "precision": ["fp32"],
        "stft": ["torch"],
        "compute": [{"torch": {"device": "cpu"}}],
        "latency": {"warmup": 0, "repeats": 1},
        # Trials in the test process: quick, and in-memory test plugins work. The fault tests ask for the
        # default (isolated) serial executor explicitly.
        "executor": {"serial": {"isolate": False}},
        "store": {
            "path": str(tmp_path / "htx.sqlite"),
            "cache_dir": str(tmp_path / "cache"),
            "artifacts_dir": str(tmp_path / "runs"),
        },
    }
    cfg.update(overrides)
    linked = tmp_path / "cache" / "coreml"
    if SHARED_CONVERSIONS and not linked.exists() and not linked.is_symlink():
        linked.parent.mkdir(parents=True, exist_ok=True)
        linked.symlink_to(SHARED_CONVERSIONS[0] / "coreml", target_is_directory=True)
    return cfg


def tiny_inner(batch: int = 1):
    """The tiny HTDemucs's full-hybrid inner model and example inputs ``(spec_cac, mix)`` of ``batch`` 1 s segments."""
    import torch

    from htx.models import random_htdemucs
    from htx.pipeline import spec_to_cac
    from htx_plugins.stft.torch_stft import TorchSTFT
    from htx_plugins.surgery.full_hybrid import FullHybrid

    model = random_htdemucs(0, channels=8, depth=4, t_layers=1, segment=1)
    mix = 0.1 * torch.randn(batch, 2, 44100, generator=torch.Generator().manual_seed(0))
    return FullHybrid().build(model), (spec_to_cac(TorchSTFT().stft(mix)), mix)


def hide_module(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``import module`` fail as if the package were not installed (an optional extra left out)."""
    import builtins

    real_import = builtins.__import__

    def importer(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == module:
            raise ImportError(f"No module named '{module}'", name=module)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importer)


def write_config(tmp_path: Path, name: str = "cfg.yaml", **overrides: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(make_config(tmp_path, **overrides), sort_keys=False))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need CUDA: without it they are skipped, saying so (never counted as passed)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU here): run `python -m pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> dict[str, Any]:
    return make_config(tmp_path)
