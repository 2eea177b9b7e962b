"""Typed data that crosses the plugin boundary: evaluations, search results, placements.

A plugin hands these to the core; the core checks them where they are handed over (:func:`check_search_result`,
:func:`check_placement`), so a wrong type is an error naming the plugin and method, never a crash later in a
view. What the store keeps is their JSON form (:meth:`SearchResult.stored`); views read it back through
:func:`stored_search`, which tolerates anything (old runs, hostile plugins) and never raises.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from htx.criteria import Criterion
from htx.errors import PluginError
from htx.types import Assignment, OpInfo

#: The metric names of an evaluation (worst case over fixtures and rows) and what they mean.
EVALUATION_METRICS: dict[str, str] = {
    "snr_db": "worst SNR over fixtures and rows, dB (None when every reference is silent)",
    "finite": "no NaN/Inf in any output sample",
    "within_tol": "every sample within targets.rtol/atol of the FP32 reference, on every fixture",
    "nan_count": "NaN samples, summed over fixtures",
    "inf_count": "Inf samples, summed over fixtures",
    "max_abs_diff": "largest |out - reference|",
    "sdr_delta_db": "worst SDR change against the FP32 reference with true stems (None without stems)",
    "model_ms": "median model time per segment on the search's own pipeline (None when not timed)",
    "fp16_op_fraction": "share of compute ops in low precision",
    "rows": "how many (fixture, STFT backend) rows the worst case covers",
    "per_fixture": "the search pipeline's metrics per fixture name",
}


class Evaluation(Mapping[str, Any]):
    """What :meth:`htx.search.SearchContext.evaluate` returns: the metrics of one assignment, worst case over
    every fixture of the run and every row that reuses the answer (:data:`EVALUATION_METRICS` lists them).

    Read them as attributes (``ev.snr_db``, ``ev.finite``) or by name (``ev["snr_db"]``, ``ev.get("model_ms")``).
    """

    __slots__ = ("_m",)

    def __init__(self, metrics: Mapping[str, Any]) -> None:
        self._m = dict(metrics)

    def __getitem__(self, key: str) -> Any:
        return self._m[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def __repr__(self) -> str:
        return f"Evaluation(snr_db={self.snr_db}, finite={self.finite}, rows={self.rows})"

    @property
    def snr_db(self) -> float | None:
        v = self._m.get("snr_db")
        return None if v is None else float(v)

    @property
    def finite(self) -> bool:
        if "finite" in self._m:
            return bool(self._m["finite"])
        return not (self._m.get("nan_count") or self._m.get("inf_count"))

    @property
    def within_tol(self) -> bool:
        return bool(self._m.get("within_tol"))

    @property
    def model_ms(self) -> float | None:
        v = self._m.get("model_ms")
        return None if v is None else float(v)

    @property
    def rows(self) -> int:
        return int(self._m.get("rows") or len(self._m.get("per_fixture") or {}) or 1)

    @property
    def per_fixture(self) -> dict[str, dict[str, Any]]:
        return dict(self._m.get("per_fixture") or {})

    def noise_power(self) -> float:
        """The worst SNR as a noise power relative to the reference (``inf`` when not finite, 0 when undefined)."""
        if not self.finite:
            return math.inf
        return 0.0 if self.snr_db is None else 10 ** (-self.snr_db / 10)

    def scalars(self) -> dict[str, Any]:
        """The scalar metrics and, per fixture, its SNR / NaN / Inf / within_tol: what a search log keeps."""
        keys = ("snr_db", "sdr_delta_db", "max_abs_diff", "nan_count", "inf_count", "within_tol", "finite",
                "fp16_op_fraction", "model_ms", "rows")
        out = {k: self._m[k] for k in keys if k in self._m}
        out["per_fixture"] = {name: {k: m.get(k) for k in ("snr_db", "nan_count", "inf_count", "within_tol", "sdr_delta_db") if k in m}
                              for name, m in self.per_fixture.items()}
        return out


@dataclass(frozen=True)
class SearchStep:
    """One evaluation of a search, as its log keeps it."""

    step: int
    phase: str
    n_fp32: int
    passed: bool
    snr_db: float | None = None
    finite: bool | None = None
    model_ms: float | None = None
    cost: float | None = None
    seconds: float = 0.0
    #: the FP32 op names of the evaluated set, in execution order
    fp32: tuple[str, ...] = ()
    #: :meth:`Evaluation.scalars` of the evaluation
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def stored(self) -> dict[str, Any]:
        d = asdict(self)
        d["fp32"] = list(self.fp32)
        metrics = d.pop("metrics")
        return {**{k: v for k, v in metrics.items() if k not in d}, **d}


@dataclass(frozen=True)
class FrontierPoint:
    """The verified set a search found for one SNR bar (a quality/cost frontier)."""

    snr_db_bar: float
    passed: bool
    fp32_ops: int
    snr_db: float | None = None
    partitions: int | None = None
    cost: float | None = None
    status: str = ""
    fp32_keys: tuple[str, ...] = ()


@dataclass
class SearchResult:
    """What a search policy returns: its answer, how it judged it and how it got there.

    A policy builds it with :meth:`htx.search.SearchContext.result` (criterion, evaluations, log, FP32 set filled
    in from the context). ``details`` holds what only this policy knows (its ranking, its cost kind): JSON values
    the views show as they are and never read by key. ``fp32_ops`` / ``fp32_keys`` are derived from
    ``assignment`` by the core (with ``fp32_types``, their count per MIL type); a policy does not set them.
    """

    assignment: Assignment
    criterion: Criterion = field(default_factory=Criterion.targets)
    status: str = ""
    passed: bool = False
    interrupted: bool = False
    evaluations: int = 0
    #: the answer's evaluation, scalars only (snr_db, finite, within_tol, model_ms, rows)
    final: dict[str, float | int | bool | None] = field(default_factory=dict)
    frontier: list[FrontierPoint] = field(default_factory=list)
    log: list[SearchStep] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    fp32_ops: list[str] = field(default_factory=list)
    fp32_keys: list[str] = field(default_factory=list)
    fp32_types: dict[str, int] = field(default_factory=dict)

    def with_ops(self, ops: list[OpInfo]) -> SearchResult:
        """This result with its FP32 set derived from the assignment over ``ops``."""
        compute = [op for op in ops if op.compute and op.name not in self.assignment.fp16]
        self.fp32_ops = [op.name for op in compute]
        self.fp32_keys = [op.key for op in compute]
        self.fp32_types = dict(Counter(op.type for op in compute))
        return self

    @property
    def summary(self) -> dict[str, Any]:
        """The stored form (what a trial's ``info["search"]`` holds)."""
        return self.stored()

    def stored(self) -> dict[str, Any]:
        return {
            **self.details,
            "criterion": str(self.criterion), "status": self.status, "passed": self.passed,
            "interrupted": self.interrupted, "evaluations": self.evaluations, "final": dict(self.final),
            "frontier": [{**asdict(f), "fp32_keys": list(f.fp32_keys)} for f in self.frontier],
            "fp32_ops": list(self.fp32_ops), "fp32_keys": list(self.fp32_keys), "fp32_types": dict(self.fp32_types),
        }


@dataclass(frozen=True)
class Placement:
    """Where an assignment would run on a unit (:meth:`htx.interfaces.compute.ComputeUnit.placement`).

    ``partitions``: precision segments in execution order (each FP32 island is a Neural Engine <-> CPU hop);
    ``ne_ops`` / ``off_ne_ops``: ops on / off the Neural Engine; ``casts``: dtype conversion ops; ``source``:
    how it was found (``"emulated"`` from the typed program, ``"device plan"`` from the runtime). ``None``:
    the unit cannot tell.
    """

    partitions: int | None = None
    ne_ops: int | None = None
    off_ne_ops: int | None = None
    casts: int | None = None
    source: str | None = None
    #: counts the runtime's own compute plan reports (stored as ``device_<name>``), where it has one
    device_plan: Mapping[str, int] | None = None

    def metrics(self) -> dict[str, int]:
        """The counts a trial stores as metrics."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("source", "device_plan") and getattr(self, f.name) is not None}
        out.update({f"device_{k}": v for k, v in (self.device_plan or {}).items()})
        return out


@dataclass
class FirstOrder:
    """First-order FP16 noise estimates for a search (:meth:`htx.search.SearchContext.first_order_noise`).

    ``powers[fixture][op name]`` is the noise power op ``name`` adds in FP16 alone, relative to the fixture's
    output power (the units of ``10 ** (-snr_db / 10)``), on the first segment of each fixture. ``groups[op
    name]`` names the op whose estimate it carries: itself on the unit that computed it, the source op's
    portable key when the estimate came from another unit (ops of one group rank together). ``unit`` labels
    the unit that computed it, ``seconds`` how long it took.
    """

    powers: dict[str, dict[str, float]]
    groups: dict[str, str]
    unit: str
    seconds: float
    projections: int


# --------------------------------------------------------------------------------------------------
# checks where a plugin hands data over


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def wrong_type(where: str, value: Any, expected: str) -> PluginError:
    return PluginError(f"{where} returned {type(value).__name__}, expected {expected}")


def check_assignment(value: Any, where: str) -> Assignment:
    if not isinstance(value, Assignment):
        raise wrong_type(where, value, "Assignment")
    if not isinstance(value.fp16, frozenset) or not all(isinstance(n, str) for n in value.fp16):
        raise PluginError(f"{where} returned an Assignment whose fp16 is not a frozenset of op names")
    return value


def check_search_result(value: Any, where: str) -> SearchResult:
    """``value`` if it is a well-typed :class:`SearchResult`, else a :class:`PluginError` naming ``where`` and the field."""
    if not isinstance(value, SearchResult):
        raise wrong_type(where, value, "SearchResult")
    check_assignment(value.assignment, where)
    problems = []
    if not isinstance(value.criterion, Criterion):
        problems.append(f"criterion is {type(value.criterion).__name__}, expected Criterion")
    for name, typ in (("status", str), ("passed", bool), ("interrupted", bool), ("details", dict), ("final", dict)):
        if not isinstance(getattr(value, name), typ):
            problems.append(f"{name} is {type(getattr(value, name)).__name__}, expected {typ.__name__}")
    if not isinstance(value.evaluations, int) or isinstance(value.evaluations, bool) or value.evaluations < 0:
        problems.append(f"evaluations is {value.evaluations!r}, expected a count")
    if isinstance(value.final, dict):
        bad = [k for k, v in value.final.items() if not (v is None or isinstance(v, bool) or _is_number(v))]
        if bad:
            problems.append(f"final[{bad[0]!r}] is not a number, bool or None")
    item_types: tuple[tuple[str, type[Any]], ...] = (("frontier", FrontierPoint), ("log", SearchStep))
    for name, typ in item_types:
        items = getattr(value, name)
        if not isinstance(items, list):
            problems.append(f"{name} is {type(items).__name__}, expected list[{typ.__name__}]")
            continue
        bad_items = [i for i, x in enumerate(items) if not isinstance(x, typ)]
        if bad_items:
            problems.append(f"{name}[{bad_items[0]}] is {type(items[bad_items[0]]).__name__}, expected {typ.__name__}")
    if problems:
        raise PluginError(f"{where} returned a SearchResult with " + "; ".join(problems))
    return value


def check_placement(value: Any, where: str) -> Placement:
    if not isinstance(value, Placement):
        raise wrong_type(where, value, "Placement")
    for f in fields(value):
        v = getattr(value, f.name)
        if f.name == "source":
            ok = v is None or isinstance(v, str)
        elif f.name == "device_plan":
            ok = v is None or (isinstance(v, Mapping) and all(isinstance(k, str) and _is_count(c) for k, c in v.items()))
        else:
            ok = v is None or _is_count(v)
        if not ok:
            raise PluginError(f"{where} returned a Placement whose {f.name} is {type(v).__name__}, not a count")
    return value


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------------
# what views read back from the store


@dataclass
class StoredSearch:
    """A search as a view shows it, read from a trial's stored ``info["search"]`` whatever it holds."""

    criterion: Criterion | None
    status: str
    passed: bool | None
    interrupted: bool
    evaluations: int | None
    n_fp32: int | None
    frontier: list[dict[str, Any]]
    log_path: str | None
    facts: dict[str, str]


def _text(v: Any, limit: int = 200) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def stored_search(raw: Any) -> StoredSearch | None:
    """Parse a stored search summary; anything malformed becomes ``None`` fields, never an exception."""
    if not isinstance(raw, Mapping):
        return None
    try:
        crit: Criterion | None = Criterion.parse(raw.get("criterion"))
    except Exception:
        crit = None
    fp32 = raw.get("fp32_ops")
    n_fp32 = len(fp32) if isinstance(fp32, list) else None
    frontier = []
    raw_frontier = raw.get("frontier")
    for f in raw_frontier if isinstance(raw_frontier, list) else []:
        if isinstance(f, Mapping) and _is_number(f.get("snr_db_bar")):
            frontier.append({"snr_db_bar": float(f["snr_db_bar"]), "passed": f.get("passed") is True,
                             "fp32_ops": f.get("fp32_ops") if _is_number(f.get("fp32_ops")) else None,
                             "partitions": f.get("partitions") if _is_number(f.get("partitions")) else None,
                             "cost": f.get("cost") if _is_number(f.get("cost")) else None,
                             "snr_db": f.get("snr_db") if _is_number(f.get("snr_db")) else None,
                             "status": _text(f.get("status", ""))})
    evals = raw.get("evaluations")
    facts = {k: _text(raw[k], 80) for k in ("rank_method", "cost_kind", "cost", "partitions", "granularity") if k in raw}
    log = raw.get("log")
    return StoredSearch(
        criterion=crit, status=_text(raw.get("status", "")), passed=raw.get("passed") if isinstance(raw.get("passed"), bool) else None,
        interrupted=raw.get("interrupted") is True, evaluations=evals if isinstance(evals, int) and not isinstance(evals, bool) else None,
        n_fp32=n_fp32, frontier=frontier, log_path=log if isinstance(log, str) else None, facts=facts,
    )


def stored_steps(raw: Any) -> list[dict[str, Any]]:
    """A search log's steps as a trace draws them (``n_fp32``, ``passed``, ``snr_db``); malformed steps are skipped."""
    out = []
    for e in raw if isinstance(raw, list) else []:
        if not isinstance(e, Mapping) or not _is_number(e.get("n_fp32")):
            continue
        snr = e.get("snr_db")
        finite_snr = float(snr) if _is_number(snr) and math.isfinite(float(snr)) else None  # type: ignore[arg-type]
        out.append({"n_fp32": float(e["n_fp32"]), "passed": e.get("passed") is True, "snr_db": finite_snr})
    return out


__all__ = [
    "EVALUATION_METRICS", "Evaluation", "FirstOrder", "FrontierPoint", "Placement", "SearchResult", "SearchStep",
    "StoredSearch", "check_assignment", "check_placement", "check_search_result", "stored_search", "stored_steps",
]
