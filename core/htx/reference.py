"""The FP32 reference: the unmodified demucs model's own forward pass, cached on disk by content hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from htx.fixtures import Fixture
from htx.models import LoadedModel

REFERENCE_VERSION = "2"  # 2: torch's MHA fast path pinned off


def reference_key(loaded: LoadedModel, fixture: Fixture, overlap: float, transition_power: float) -> str:
    import demucs

    raw = f"{REFERENCE_VERSION}|{demucs.__version__}|{torch.__version__}|{loaded.hash}|{fixture.hash}|{overlap}|{transition_power}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def compute_reference(loaded: LoadedModel, mix: np.ndarray, overlap: float, transition_power: float) -> np.ndarray:
    """demucs's ``apply_model`` (FP32, CPU, ``shifts=0``, ``split=True``) on ``mix [C, L]`` -> ``[S, C, L]``."""
    from demucs.apply import apply_model

    model = loaded.model.to("cpu").float().eval()
    # torch's fused self-attention fast path is a global switch that conversion and the compute units turn
    # off; its kernel alone differs from the unfused path by ~1.6e-7 on the demo model (above atol 1e-7), so
    # the reference takes the unfused path whatever ran before it in this process.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            out = apply_model(
                model, torch.from_numpy(mix)[None], shifts=0, split=True, overlap=overlap,
                transition_power=transition_power, progress=False, device="cpu",
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
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
