"""The FP32 reference: the unmodified demucs model's own forward pass, cached on disk by content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from htx.fixtures import Fixture
from htx.models import LoadedModel

REFERENCE_VERSION = "1"


def reference_key(loaded: LoadedModel, fixture: Fixture, overlap: float, transition_power: float) -> str:
    import demucs

    raw = f"{REFERENCE_VERSION}|{demucs.__version__}|{torch.__version__}|{loaded.hash}|{fixture.hash}|{overlap}|{transition_power}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def compute_reference(loaded: LoadedModel, mix: np.ndarray, overlap: float, transition_power: float) -> np.ndarray:
    """demucs's ``apply_model`` (FP32, CPU, ``shifts=0``, ``split=True``) on ``mix [C, L]`` -> ``[S, C, L]``."""
    from demucs.apply import apply_model

    model = loaded.model.to("cpu").float().eval()
    with torch.no_grad():
        out = apply_model(
            model, torch.from_numpy(mix)[None], shifts=0, split=True, overlap=overlap,
            transition_power=transition_power, progress=False, device="cpu",
        )
    return out[0].numpy().astype(np.float32)


def get_reference(loaded: LoadedModel, fixture: Fixture, overlap: float, transition_power: float, cache_dir: Path | None) -> tuple[np.ndarray, bool]:
    """The reference stems ``[S, C, L]`` and whether they came from the on-disk cache."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "reference" / f"{reference_key(loaded, fixture, overlap, transition_power)}.npy"
        if path.exists():
            try:
                return np.load(path), True
            except Exception:
                path.unlink(missing_ok=True)  # a torn write from an interrupted run: recompute
    ref = compute_reference(loaded, fixture.mix, overlap, transition_power)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, ref)
        tmp.replace(path)
    return ref, False
