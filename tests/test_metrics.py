from __future__ import annotations

import math

import numpy as np
import pytest

from htx.criteria import Criterion
from htx.metrics import accuracy, percentiles, separation_quality


def passes(metrics, snr_db) -> bool:  # the leaderboard's pass mark
    return Criterion.targets().passes(metrics, snr_db)


def test_accuracy_hand_computed():
    ref = np.array([[[1.0, -2.0, 2.0, 0.0]]], dtype=np.float32)   # sum ref^2 = 9, sum |ref| = 5
    out = np.array([[[1.0, -2.0, 2.5, -0.5]]], dtype=np.float32)  # diff = [0, 0, .5, .5] -> sum d^2 = .5
    m = accuracy(ref, out, rtol=0.1, atol=0.01)
    assert m["snr_db"] == pytest.approx(10 * math.log10(9 / 0.5))
    assert m["max_abs_diff"] == pytest.approx(0.5)
    assert m["mean_abs_diff"] == pytest.approx(0.25)
    assert m["rel_l1"] == pytest.approx(1.0 / 5.0)
    assert m["nan_count"] == 0 and m["inf_count"] == 0
    assert m["within_tol"] is False  # 0.5 > 0.01 + 0.1 * 2
    assert accuracy(ref, ref, 0.0, 0.0)["within_tol"] is True
    assert accuracy(ref, ref, 0.0, 0.0)["snr_db"] == math.inf


def test_within_tol_boundary():
    ref = np.array([1.0, 10.0])
    out = np.array([1.0 + 0.011, 10.0 + 0.101])
    assert not accuracy(ref, out, rtol=0.01, atol=0.0)["within_tol"]
    assert accuracy(ref, np.array([1.0 + 0.0099, 10.0 + 0.0999]), rtol=0.01, atol=0.0)["within_tol"]


def test_silent_reference_and_nonfinite():
    z = np.zeros((2, 3))
    assert accuracy(z, z, 1e-3, 1e-4)["snr_db"] is None
    out = np.array([[1.0, np.nan, np.inf], [0, 0, -np.inf]])
    m = accuracy(np.ones((2, 3)), out, 1e-3, 1e-4)
    assert (m["nan_count"], m["inf_count"]) == (1, 2)
    assert m["snr_db"] == -math.inf and m["within_tol"] is False
    assert not passes(m, 60)


def test_sdr_per_stem_and_delta():
    truth = np.array([[[1.0, 1.0]], [[2.0, 0.0]]])
    ref = np.array([[[1.0, 0.9]], [[2.0, 0.0]]])  # stem 0: 10log10(2/.01) ; stem 1: inf (excluded from mean)
    est = np.array([[[1.0, 0.8]], [[2.0, 0.1]]])
    q = separation_quality(truth, est, ref, ["a", "b"])
    assert q["sdr_db.a"] == pytest.approx(10 * math.log10(2 / 0.04))
    assert q["sdr_delta_db.a"] == pytest.approx(10 * math.log10(2 / 0.04) - 10 * math.log10(2 / 0.01))
    assert q["sdr_db.b"] == pytest.approx(10 * math.log10(4 / 0.01))
    assert q["sdr_db"] == pytest.approx(q["sdr_db.a"])


def test_percentiles_and_passes():
    p = percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert p == {"median": 3.0, "p10": pytest.approx(1.4), "p90": pytest.approx(4.6)}
    assert passes({"snr_db": 61, "within_tol": False, "nan_count": 0}, 60)
    assert not passes({"snr_db": 59, "within_tol": False, "nan_count": 0}, 60)
    assert passes({"snr_db": None, "within_tol": True, "nan_count": 0}, 60)
