"""Pass criteria of search policies: when is an assignment's aggregated trial result good enough?

A criterion is written in the config as one of::

    criterion: finite              # no NaN/Inf in any output sample of any fixture
    criterion: within_tol          # every sample within targets.rtol/atol of the FP32 reference
    criterion: targets             # what the leaderboard's pass mark uses: finite, and within_tol or snr >= targets.snr_db
    criterion: {snr_db: 60}        # finite and worst-case SNR over fixtures >= 60 dB
    criterion: "snr_db >= 60"      # the same, as a string

The metrics judged are those of :meth:`htx.contracts.SearchContext.evaluate`: worst case over every fixture
of the run (min ``snr_db``, summed NaN/Inf counts, ``within_tol`` only if every fixture is).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field

from htx.contracts import Params
from htx.metrics import passes

_SNR_TEXT = re.compile(r"^\s*snr(?:_db)?\s*(?:>=|=>|:)\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(?:db)?\s*$", re.IGNORECASE)


class SnrCriterion(Params):
    """Finite output and worst-case SNR against the FP32 reference of at least ``snr_db``."""

    snr_db: float = Field(description="minimum SNR in dB over all fixtures")


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        m = _SNR_TEXT.match(text)
        if m:
            return {"snr_db": float(m.group(1))}
        if text.replace("-", "_") in ("finite", "within_tol", "targets"):
            return text.replace("-", "_")
        raise ValueError(
            f"unknown criterion {value!r}: use finite, within_tol, targets, {{snr_db: 60}} or 'snr_db >= 60'"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"criterion {value!r} is a bare number: write {{snr_db: {value}}} for an SNR threshold")
    return value


Criterion = Annotated[Union[Literal["finite", "within_tol", "targets"], SnrCriterion], BeforeValidator(_parse)]


def describe(criterion: Any) -> str:
    """A short human-readable form, e.g. ``snr_db >= 60``."""
    if isinstance(criterion, SnrCriterion):
        return f"snr_db >= {criterion.snr_db:g}"
    return str(criterion)


def criterion_passes(criterion: Any, metrics: dict[str, Any], targets: Any = None) -> bool:
    """Whether aggregated trial ``metrics`` meet ``criterion``.

    An SNR criterion also requires finite output. When every fixture's reference is silent the SNR is
    undefined (``None``); ``within_tol`` decides then.
    """
    finite = bool(metrics.get("finite", not (metrics.get("nan_count") or metrics.get("inf_count"))))
    if criterion == "finite":
        return finite
    if criterion == "within_tol":
        return finite and bool(metrics.get("within_tol"))
    if criterion == "targets":
        return finite and passes(metrics, float(getattr(targets, "snr_db", 60.0)))
    if isinstance(criterion, SnrCriterion):
        if not finite:
            return False
        snr = metrics.get("snr_db")
        if snr is None:
            return bool(metrics.get("within_tol"))
        return float(snr) >= criterion.snr_db
    raise TypeError(f"unknown criterion {criterion!r}")
