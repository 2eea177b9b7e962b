"""Accuracy metrics of one trial on one fixture (the single place they are computed).

All metrics run over every stem, channel and sample, in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _sdr(ref: np.ndarray, est: np.ndarray) -> float | None:
    """MDX SDR: ``10 log10(sum s^2 / sum (s - s_hat)^2)``; None for a silent reference."""
    num = float(np.sum(np.square(ref, dtype=np.float64)))
    den = float(np.sum(np.square(ref.astype(np.float64) - est.astype(np.float64))))
    if num == 0.0:
        return None
    if den == 0.0:
        return math.inf
    return 10.0 * math.log10(num / den)


def accuracy(ref: np.ndarray, out: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
    """snr_db, max/mean abs diff, rel_l1, NaN/Inf counts and within_tol of ``out`` against ``ref``."""
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
    ref64 = ref.astype(np.float64)
    out64 = out.astype(np.float64)
    nan_count = int(np.isnan(out64).sum())
    inf_count = int(np.isinf(out64).sum())
    diff = np.abs(ref64 - out64)
    finite = nan_count == 0 and inf_count == 0
    sum_ref = float(np.sum(np.abs(ref64)))
    metrics: dict[str, Any] = {
        "nan_count": nan_count,
        "inf_count": inf_count,
        "max_abs_diff": float(np.max(diff)) if finite and diff.size else (math.inf if not finite else 0.0),
        "mean_abs_diff": float(np.mean(diff)) if finite and diff.size else (math.inf if not finite else 0.0),
        "rel_l1": (float(np.sum(diff)) / sum_ref if sum_ref > 0 else None) if finite else math.inf,
        "snr_db": _sdr(ref64, out64) if finite else (None if not np.any(ref64) else -math.inf),
        "within_tol": bool(finite and np.all(diff <= atol + rtol * np.abs(ref64))),
    }
    return metrics


def separation_quality(
    truth: np.ndarray, estimate: np.ndarray, reference: np.ndarray, stem_names: list[str]
) -> dict[str, Any]:
    """Per-stem SDR of ``estimate`` and of the FP32 ``reference`` vs true stems, and their difference."""
    out: dict[str, Any] = {}
    sdrs, ref_sdrs = [], []
    for i, name in enumerate(stem_names):
        s = _sdr(truth[i], estimate[i])
        r = _sdr(truth[i], reference[i])
        out[f"sdr_db.{name}"] = s
        out[f"sdr_delta_db.{name}"] = (s - r) if (s is not None and r is not None) else None
        if s is not None and r is not None and math.isfinite(s) and math.isfinite(r):
            sdrs.append(s)
            ref_sdrs.append(r)
    out["sdr_db"] = float(np.mean(sdrs)) if sdrs else None
    out["ref_sdr_db"] = float(np.mean(ref_sdrs)) if ref_sdrs else None
    out["sdr_delta_db"] = (out["sdr_db"] - out["ref_sdr_db"]) if sdrs else None
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    """Median, p10 and p90 of timing samples (seconds)."""
    arr = np.asarray(samples, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p10": float(np.percentile(arr, 10)),
        "p90": float(np.percentile(arr, 90)),
    }


#: How two measurements of one fixture combine into the worse of the two (sibling rows of one assignment).
_WORSE_LOW = ("snr_db", "sdr_db", "sdr_delta_db")
_WORSE_HIGH = ("max_abs_diff", "mean_abs_diff", "rel_l1", "nan_count", "inf_count")


def worse(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two measurements of one fixture as one: the worse value of each accuracy metric, ``a``'s others."""
    out = dict(a)
    for k in _WORSE_LOW:
        vals = [v for v in (a.get(k), b.get(k)) if v is not None]
        if vals:
            out[k] = min(vals)
    for k in _WORSE_HIGH:
        vals = [v for v in (a.get(k), b.get(k)) if v is not None]
        if vals:
            out[k] = max(vals)
    if "within_tol" in a or "within_tol" in b:
        out["within_tol"] = bool(a.get("within_tol", True)) and bool(b.get("within_tol", True))
    return out


def worst_case(metrics: dict[str, Any], *others: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``metrics`` (an :func:`aggregate`) made the worst case over more rows of the same fixtures: ``others``
    are per-fixture measurements of the same assignment through other pipelines (the grid's other STFT
    backends). Accuracy takes the worse value per fixture; latency stays ``metrics``' own."""
    per = dict(metrics["per_fixture"])
    for other in others:
        for name, m in other.items():
            per[name] = worse(per[name], m) if name in per else m
    out = {**metrics, **aggregate(per)}
    out["model_ms"] = metrics.get("model_ms")
    out["rows"] = metrics.get("rows", len(metrics["per_fixture"])) + sum(len(o) for o in others)
    return out


def aggregate(per_fixture: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worst case over fixtures: min SNR, max diffs, summed NaN/Inf, within_tol only if all are."""
    snrs = [m["snr_db"] for m in per_fixture.values() if m.get("snr_db") is not None]
    model_ms = [m["model_ms"] for m in per_fixture.values() if m.get("model_ms") is not None]
    return {
        "model_ms": sum(model_ms) / len(model_ms) if model_ms else None,
        "snr_db": min(snrs) if snrs else None,
        "max_abs_diff": max((m["max_abs_diff"] for m in per_fixture.values()), default=0.0),
        "nan_count": sum(m["nan_count"] for m in per_fixture.values()),
        "inf_count": sum(m["inf_count"] for m in per_fixture.values()),
        "within_tol": all(m["within_tol"] for m in per_fixture.values()),
        "finite": all(m["nan_count"] == 0 and m["inf_count"] == 0 for m in per_fixture.values()),
        "sdr_delta_db": min((m["sdr_delta_db"] for m in per_fixture.values() if m.get("sdr_delta_db") is not None), default=None),
        "per_fixture": per_fixture,
    }
