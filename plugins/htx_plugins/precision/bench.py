"""``htx bench search``: wall time and evaluation count of one bisect search vs a linear scan.

For each model the benchmark runs the real pipeline (FP32 reference from the disk cache, one ``prepare``,
then one ``compile`` + separation + metrics per evaluation) on the ``planted-faults`` surgery, whose four
known culprits make the search non-trivial on any HTDemucs, with one fixture of one segment. It reports the
bisect search's wall time and evaluation count next to the n evaluations of a one-op-at-a-time scan.

A linear scan is not run: its time is *estimated* as n times the median evaluation time measured during the
search. When a search would not finish within ``max_seconds`` (the full-size model on a CPU: each FP16-
emulated evaluation takes minutes), the search is stopped there; the row then reports what was measured and
a *projection*: the evaluation count the same algorithm needs with the planted oracle (pass iff the four
culprits are FP32, the construction verified on every model that finished) times the median measured
evaluation time. Projected and estimated numbers are labelled as such.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from htx.api import (
    Assignment,
    SearchContext,
    Session,
    Store,
    build_registry,
    get_plugin_manager,
    load_registry,
    parse_config,
    run_search,
)
from htx_plugins.precision.planted import planted_ops, planted_plugin

MODELS: dict[str, Any] = {
    "demo": "demo",
    # HTDemucs's own defaults (channels 48, depth 4, 5 transformer layers, 10 s segment), random init.
    "full": {"random": {"seed": 0}},
}


def _load_average() -> float | None:
    """The 1-minute load average: benchmarks on a shared machine report how busy it was."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _oracle_evaluations(ops: list[Any], culprits: list[str], params: dict[str, Any]) -> int:
    """Evaluations bisect needs on ``ops`` when exactly ``culprits`` must be FP32 (no model run)."""
    from htx_plugins.precision.bisect import Bisect

    need = frozenset(culprits)
    compute = [op.name for op in ops if op.compute]

    def evaluate(a: Assignment) -> dict[str, Any]:
        ok = need <= frozenset(n for n in compute if n not in a.fp16)
        return {"finite": ok, "nan_count": 0 if ok else 1, "inf_count": 0, "within_tol": ok, "snr_db": None}

    ctx = SearchContext(ops, evaluate)
    return run_search(Bisect(Bisect.Params(**params)), ctx).evaluations


def bench_model(
    model_key: str,
    criterion: Any = "finite",
    device: str = "cpu",
    max_seconds: float = 600.0,
    cache_dir: str = "experiments/cache",
    say: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """One bisect search on ``planted-faults`` of ``model_key`` (``demo`` or ``full``); a result row."""
    from htx_plugins.precision.bisect import Bisect, bound
    from htx_plugins.precision.sensitivity import Sensitivity

    registry = build_registry(get_plugin_manager(extra_plugins=(planted_plugin(),)))
    load_before = _load_average()
    params = {"criterion": criterion}
    with tempfile.TemporaryDirectory() as tmp:
        raw = {
            "name": f"bench-search-{model_key}", "model": MODELS[model_key],
            "fixtures": ["sine_440"],  # default duration: exactly one model segment
            "surgery": ["planted-faults"], "precision": [{"bisect": params}], "stft": ["torch"],
            "compute": [{"torch": {"device": device}}],
            "store": {"path": f"{tmp}/htx.sqlite", "cache_dir": cache_dir, "artifacts_dir": f"{tmp}/runs"},
            "trial_timeout_s": 1e6,
        }
        cfg = parse_config(raw, f"bench {model_key}", registry)
        with Store(cfg.store.path):  # the run's store, as in `htx run` (the search writes no rows)
            session = Session(cfg, registry, say)
            t0 = time.perf_counter()
            session.load()
            load_s = time.perf_counter() - t0
            spec = session.specs()[0]
            t0 = time.perf_counter()
            prep = session.prepared(spec)
            prepare_s = time.perf_counter() - t0
            n = sum(op.compute for op in prep.ops)
            culprits = planted_ops(prep.ops)["culprits"]
            times: list[float] = []

            def evaluate(a: Assignment) -> dict[str, Any]:
                t = time.perf_counter()
                m = session.evaluate(spec, a)
                times.append(time.perf_counter() - t)
                say(f"  evaluation {len(times)}: {len(a.fp16)}/{n} ops FP16, finite={m['finite']}, {times[-1]:.1f} s")
                return m

            ctx = SearchContext(prep.ops, evaluate, targets=cfg.targets)
            say(f"{model_key}: bisect over {n} compute ops (planted culprits {culprits}) ...")
            t0 = time.perf_counter()
            # bisect's own time budget: it stops before the first evaluation past max_seconds
            result = run_search(Bisect(Bisect.Params(**params, max_seconds=max_seconds)), ctx)
            finished = not result.status.startswith("stopped")
            search_s = time.perf_counter() - t0
            say(f"{model_key}: sensitivity on the same trial ...")
            sctx = SearchContext(prep.ops, evaluate, targets=cfg.targets, first_order=lambda k, u: session.search(spec).first_order(k, u))
            t0 = time.perf_counter()
            sens = run_search(Sensitivity(Sensitivity.Params(**params, max_seconds=max_seconds)), sctx)
            sens_s = time.perf_counter() - t0
    model = session.workspace.model
    median = statistics.median(times) if times else float("nan")
    oracle = _oracle_evaluations(prep.ops, culprits, params)
    row: dict[str, Any] = {
        "model": model_key, "model_source": model.source,
        "segment_s": model.segment_length / model.samplerate, "device": device, "criterion": str(criterion),
        "n_ops": n, "planted_k": len(culprits), "load_s": load_s, "prepare_s": prepare_s,
        "finished": finished, "evaluations_measured": len(times), "search_s_measured": search_s,
        "eval_s_median": median, "eval_s_min": min(times) if times else None, "eval_s_max": max(times) if times else None,
        "evaluations_bound": bound(len(culprits), n), "oracle_evaluations": oracle,
        "linear_scan_evaluations": n, "linear_scan_s_estimated": n * median,
        "torch_threads": torch.get_num_threads(), "load_average_1min": [load_before, _load_average()],
        "sensitivity_evaluations": sens.evaluations, "sensitivity_s": sens_s,
        "sensitivity_rank_method": sens.details.get("rank_method"),
        "sensitivity_found_planted_exactly": sorted(sens.fp32_ops) == sorted(culprits),
    }
    if finished:
        found = result.fp32_ops
        row.update({
            "evaluations": result.evaluations, "search_s": search_s, "found": found,
            "found_planted_exactly": sorted(found) == sorted(culprits),
            "speedup_vs_linear_estimated": (n * median) / search_s if search_s else None,
        })
    else:
        row.update({
            "evaluations": None, "search_s": None,
            "evaluations_projected": oracle, "search_s_projected": oracle * median,
            "speedup_vs_linear_projected": n / oracle,
        })
    return row


def compare_policies(
    model_key: str, criterion: Any, device: str, fixtures: list[str], compute: dict[str, Any] | None = None,
    max_seconds: float = 900.0, policies: tuple[str, ...] = ("bisect", "sensitivity"),
    cache_dir: str = "experiments/cache", say: Callable[[str], None] = lambda m: None,
    sensitivity_params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``bisect`` and ``sensitivity`` on the same trial (the real model, full-hybrid: accumulated rounding noise,
    the common case), side by side: evaluations, wall time, FP32 ops, partitions, final SNR, time to rank."""
    from htx_plugins.precision.bisect import Bisect
    from htx_plugins.precision.sensitivity import Sensitivity

    registry = load_registry()
    unit = compute or {"torch": {"device": device}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = {
            "name": f"bench-search-{model_key}", "model": MODELS[model_key], "fixtures": fixtures,
            "surgery": ["full-hybrid"], "precision": ["fp32"], "stft": ["torch"], "compute": [unit],
            "store": {"path": f"{tmp}/htx.sqlite", "cache_dir": cache_dir, "artifacts_dir": f"{tmp}/runs"},
            "trial_timeout_s": 1e6,
        }
        cfg = parse_config(raw, f"bench {model_key}", registry)
        session = Session(cfg, registry, say)
        session.load()
        spec = session.specs()[0]
        prep = session.prepared(spec)
        n = sum(op.compute for op in prep.ops)
        all16 = session.evaluate(spec, Assignment.all_fp16(prep.ops))
        for name in policies:
            base, _, rank = name.partition(":")  # sensitivity:probe ranks by subtree evaluations instead of gradients
            cls = {"bisect": Bisect, "sensitivity": Sensitivity}[base]
            params: dict[str, Any] = {"criterion": criterion, "max_seconds": max_seconds}
            if base == "bisect":
                params["max_evaluations"] = 100000
            else:
                params.update({"cost": "partitions", **({"rank": rank} if rank else {}), **(sensitivity_params or {})})
            policy = cls(cls.Params(**params))
            ctx = SearchContext(prep.ops, lambda a: session.evaluate(spec, a), targets=cfg.targets,
                                first_order=lambda k, u: session.search(spec).first_order(k, u))
            say(f"{model_key}: {name} over {n} compute ops on {prep.compute.label} ...")
            t0 = time.perf_counter()
            result = run_search(policy, ctx)
            wall = time.perf_counter() - t0
            final = session.evaluate(spec, result.assignment)
            rows.append({
                "model": model_key, "policy": name, "unit": prep.compute.runtime, "criterion": str(criterion),
                "n_ops": n, "all_fp16_snr_db": all16.get("snr_db"), "evaluations": result.evaluations, "search_s": wall,
                "rank_evaluations": result.summary.get("rank_evaluations"), "rank_s": result.summary.get("rank_s"),
                "rank_method": result.summary.get("rank_method"), "rank_note": result.summary.get("rank_note"),
                "params": {k: v for k, v in params.items() if k != "criterion"},
                "one_minimal": result.summary.get("one_minimal"), "merged": result.summary.get("merged"),
                "first_verified": result.summary.get("first_verified"),
                "fixtures": fixtures, "cpus": os.cpu_count(),
                "fp32_ops": n - len(result.assignment.fp16), "status": result.summary.get("status"),
                "final_snr_db": final.get("snr_db"), "passes": policy.params.criterion.passes(final, cfg.targets),
                **prep.compute.placement(prep.prepared, result.assignment).metrics(),
                "fp32_keys": [op.key for op in prep.ops if op.compute and op.name not in result.assignment.fp16],
                "host": platform.node(), "torch": torch.__version__,
            })
    return rows
