"""Pass criteria: when is a measured result good enough? The one definition of "passes" in htx.

A criterion is written in a config (a search policy's ``criterion`` option) as one of::

    criterion: finite              # no NaN/Inf in any output sample of any fixture
    criterion: within_tol          # every sample within targets.rtol/atol of the FP32 reference
    criterion: targets             # what the leaderboard's pass mark uses: finite, and within_tol or snr >= targets.snr_db
    criterion: {snr_db: 60}        # finite and worst-case SNR over fixtures >= 60 dB
    criterion: "snr_db >= 60"      # the same, as a string

The leaderboard's pass mark is ``Criterion.targets()``; a search judges its evaluations (worst case over every
fixture and row, :class:`htx.results.Evaluation`) with its own criterion, through the same :meth:`Criterion.passes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

_SNR_TEXT = re.compile(r"^\s*snr(?:_db)?\s*(?:>=|=>|:)\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(?:db)?\s*$", re.IGNORECASE)
_KINDS = ("finite", "within_tol", "targets")
#: The end-to-end SNR bar when a config sets none (``targets.snr_db``).
DEFAULT_SNR_DB = 60.0


class Criterion(BaseModel):
    """A pass criterion: ``kind`` is ``finite``, ``within_tol``, ``targets`` or ``snr_db`` (with ``snr_db``, the bar).

    Parsed from every config form above (``Criterion.parse("snr_db >= 60")``), printed as ``snr_db >= 60``, and
    stored in its config form (``{"snr_db": 60.0}`` or ``"targets"``), so a plugin option typed ``Criterion``
    keeps its label.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["finite", "within_tol", "targets", "snr_db"]
    snr_db: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, Criterion):
            return {"kind": value.kind, "snr_db": value.snr_db}
        if isinstance(value, str):
            text = value.strip()
            m = _SNR_TEXT.match(text)
            if m:
                return {"kind": "snr_db", "snr_db": float(m.group(1))}
            if text.replace("-", "_") in _KINDS:
                return {"kind": text.replace("-", "_")}
            raise ValueError(f"unknown criterion {value!r}: use finite, within_tol, targets, {{snr_db: 60}} or 'snr_db >= 60'")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"criterion {value!r} is a bare number: write {{snr_db: {value}}} for an SNR threshold")
        if isinstance(value, Mapping) and "kind" not in value:
            if set(value) != {"snr_db"}:
                raise ValueError(f"criterion {dict(value)!r}: the only mapping form is {{snr_db: X}}")
            snr = value["snr_db"]
            if isinstance(snr, bool) or not isinstance(snr, (int, float)):
                raise ValueError(f"criterion snr_db must be a number of dB, got {snr!r}")
            return {"kind": "snr_db", "snr_db": float(snr)}
        return value

    @model_validator(mode="after")
    def _bar(self) -> Criterion:
        if (self.kind == "snr_db") != (self.snr_db is not None):
            raise ValueError("an snr_db criterion needs its bar, and only it has one")
        return self

    @model_serializer
    def _config_form(self) -> Any:
        return {"snr_db": self.snr_db} if self.kind == "snr_db" else self.kind

    @classmethod
    def parse(cls, value: Any) -> Criterion:
        """A criterion from any config form; raises ``ValueError`` (pydantic's) on anything else."""
        return value if isinstance(value, Criterion) else cls.model_validate(value)

    @classmethod
    def targets(cls) -> Criterion:
        """The run's targets (the leaderboard's pass mark)."""
        return cls(kind="targets")

    @classmethod
    def snr(cls, snr_db: float) -> Criterion:
        return cls(kind="snr_db", snr_db=float(snr_db))

    def __str__(self) -> str:
        return f"snr_db >= {self.snr_db:g}" if self.kind == "snr_db" else self.kind

    def bar_db(self, targets: Any = None) -> float | None:
        """The SNR bar in dB this criterion judges by (``None`` for ``finite`` / ``within_tol``)."""
        if self.kind == "snr_db":
            return self.snr_db
        if self.kind == "targets":  # the config's targets, or their snr_db bar as a number
            if isinstance(targets, (int, float)):
                return float(targets)
            return float(getattr(targets, "snr_db", DEFAULT_SNR_DB))
        return None

    def passes(self, metrics: Mapping[str, Any], targets: Any = None) -> bool:
        """Whether ``metrics`` (one fixture's, or an aggregate over fixtures) meet this criterion.

        Every criterion requires finite output. ``targets``: within tolerance, or SNR at least
        ``targets.snr_db``. An SNR criterion: SNR at least the bar; when every reference is silent the SNR is
        undefined (``None``) and ``within_tol`` decides.
        """
        finite = not (metrics.get("nan_count") or metrics.get("inf_count")) and metrics.get("finite", True) is not False
        if not finite:
            return False
        if self.kind == "finite":
            return True
        if self.kind == "within_tol":
            return bool(metrics.get("within_tol"))
        if self.kind == "targets" and metrics.get("within_tol"):
            return True
        snr = metrics.get("snr_db")
        if snr is None:
            return self.kind == "snr_db" and bool(metrics.get("within_tol"))
        bar = self.bar_db(targets)
        return bar is not None and float(snr) >= bar


__all__ = ["DEFAULT_SNR_DB", "Criterion"]
