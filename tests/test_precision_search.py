"""Precision search: bisect, magnitude and NaN-source localization.

Evidence on a planted-fault model run through the real pipeline (Runner, SQLite store, torch compute unit):
the ``planted-faults`` surgery adds gain stages whose ``up2``/``down`` convs overflow FP16 and nothing else.
The search algorithm itself is also checked against synthetic pass/fail oracles (random planted sets,
non-monotone oracles), which cost no model evaluations.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_config
from htx.api import Assignment, OpInfo, OpStats, SearchContext
from htx.config import load_config, parse_config
from htx.criteria import Criterion
from htx.errors import ConfigError
from htx.grid import expand_grid
from htx.leaderboard import collect, rich_table
from htx.models import REPO_ROOT
from htx.nan_sources import find_nan_sources, non_finite_ops
from htx.plugins import build_registry, get_plugin_manager
from htx.run import Run
from htx.store import Store
from htx_plugins.precision.bisect import Bisect, BisectParams, bound, minimal_units
from htx_plugins.precision.magnitude import Magnitude, keep_reason
from htx_plugins.precision.planted import planted_ops, planted_plugin


def _passes(criterion, metrics, targets=None) -> bool:
    return Criterion.parse(criterion).passes(metrics, targets)

# --------------------------------------------------------------------------------------------------
# synthetic oracles: the search algorithm without a model


def _ops(n: int, types: list[str] | None = None) -> list[OpInfo]:
    ops = [OpInfo(f"op_{i}", types[i] if types else "conv") for i in range(n)]
    # Layout ops are never searched over: they must not show up in assignments or counts.
    return [x for i, op in enumerate(ops) for x in ([op, OpInfo(f"reshape_{i}", "reshape", compute=False)] if i % 7 == 3 else [op])]


def _ctx(ops: list[OpInfo], passes) -> SearchContext:
    compute = [op.name for op in ops if op.compute]

    def evaluate(a: Assignment) -> dict:
        keep = frozenset(n for n in compute if n not in a.fp16)
        ok = passes(keep)
        return {"finite": ok, "nan_count": 0 if ok else 7, "inf_count": 0, "within_tol": ok,
                "snr_db": 70.0 if ok else -math.inf, "sdr_delta_db": None, "fp16_op_fraction": a.fp16_fraction(ops),
                "per_fixture": {"fx": {"snr_db": 70.0 if ok else -math.inf, "nan_count": 0 if ok else 7}}}

    return SearchContext(ops, evaluate)


def _search(ops, passes, **params):
    ctx = _ctx(ops, passes)
    result = Bisect(BisectParams(**{"criterion": "finite", **params})).search(ctx)
    keep = frozenset(op.name for op in ops if op.compute and op.name not in result.assignment.fp16)
    return result, keep, ctx


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_bisect_finds_random_planted_sets_within_bound(data):
    n = data.draw(st.integers(2, 400), label="n")
    k = data.draw(st.integers(1, min(6, n)), label="k")
    culprits = frozenset(f"op_{i}" for i in data.draw(st.sets(st.integers(0, n - 1), min_size=k, max_size=k)))
    ops = _ops(n)
    result, keep, ctx = _search(ops, lambda kept: culprits <= kept)
    assert keep == culprits
    assert result.evaluations == ctx.evaluations == len(result.log)
    assert result.evaluations <= bound(k, n), (result.evaluations, bound(k, n))
    assert result.summary["status"] == "found" and result.summary["passed"]
    assert result.summary["fp32_ops"] == sorted(culprits, key=lambda s: int(s.split("_")[1]))
    # every evaluation is logged with its assignment and outcome; the last one verified the final set
    assert all({"fp32", "passed", "phase", "snr_db"} <= set(e.stored()) for e in result.log)
    assert list(result.log[result.summary["verified_step"]].fp32) == result.summary["fp32_ops"]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_bisect_is_robust_to_non_monotone_oracles(data):
    """Random oracles: pass iff some clause holds (needs all of R, none of F), or everything is FP32."""
    n = data.draw(st.integers(3, 60), label="n")
    names = [f"op_{i}" for i in range(n)]
    clauses = []
    for _ in range(data.draw(st.integers(1, 3))):
        req = frozenset(data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=4)))
        forbid = frozenset(data.draw(st.sets(st.sampled_from(names), max_size=2))) - req
        clauses.append((req, forbid))
    everything = frozenset(names)

    def passes(kept: frozenset) -> bool:
        return kept == everything or any(r <= kept and not (f & kept) for r, f in clauses)

    result, keep, _ = _search(_ops(n), passes)
    assert passes(keep), "the returned set must pass (it was verified)"
    assert result.summary["passed"]
    for member in keep:  # 1-minimal: dropping any member fails
        assert not passes(keep - {member}), member


def test_bisect_all_fp16_passes_in_one_evaluation():
    result, keep, _ = _search(_ops(50), lambda kept: True)
    assert keep == frozenset() and result.evaluations == 1
    assert result.summary["status"] == "all-fp16 passes" and result.summary["verified_step"] == 0


def test_bisect_unreachable_when_all_fp32_fails():
    result, _, _ = _search(_ops(20), lambda kept: False)
    assert result.evaluations == 2 and result.assignment == Assignment.all_fp32()
    assert result.summary["status"] == "unreachable" and result.summary["passed"] is False


def test_bisect_stops_at_max_evaluations_with_smallest_passing_set():
    culprits = frozenset({"op_3", "op_40", "op_77"})
    result, keep, _ = _search(_ops(100), lambda kept: culprits <= kept, max_evaluations=6)
    assert result.summary["status"] == "stopped at max_evaluations=6"
    assert culprits <= keep and len(keep) < 100  # a verified passing set, smaller than all-FP32
    assert result.evaluations == 6
    slow, _, _ = _search(_ops(100), lambda kept: culprits <= kept, max_seconds=1e-9)
    assert slow.summary["status"] == "stopped at max_seconds" and slow.evaluations == 0
    assert slow.assignment == Assignment.all_fp32() and slow.summary["passed"] is False  # nothing verified yet


def test_granularity_type_and_type_then_instance():
    types = ["conv", "add", "softmax", "conv", "mul", "softmax", "add", "layer_norm", "softmax", "conv"] * 6
    ops = _ops(len(types), types)
    culprits = frozenset({"op_15", "op_42"})  # both softmax instances
    by_type, keep_t, _ = _search(ops, lambda kept: culprits <= kept, granularity="type")
    softmax = {op.name for op in ops if op.type == "softmax"}
    assert keep_t == softmax and by_type.summary["fp32_types"] == {"softmax": len(softmax)}
    tti, keep_i, _ = _search(ops, lambda kept: culprits <= kept, granularity="type-then-instance")
    assert keep_i == culprits
    inst, keep_n, _ = _search(ops, lambda kept: culprits <= kept, granularity="instance")
    assert keep_n == culprits
    # the type stage narrows the candidates: fewer evaluations than a plain instance search here
    assert tti.evaluations < len(types) and inst.evaluations <= bound(2, len(types))
    two_types = frozenset({"op_2", "op_7"})  # a softmax and a layer_norm
    _, keep_2, _ = _search(ops, lambda kept: two_types <= kept, granularity="type-then-instance")
    assert keep_2 == two_types


def test_minimal_units_contract():
    calls = []

    def test(idx, phase):
        calls.append((tuple(idx), phase))
        return {1, 5} <= set(idx)

    assert sorted(minimal_units(8, test)) == [1, 5]
    assert calls[0] == ((), "all-fp16") and calls[1] == (tuple(range(8)), "all-fp32")
    assert minimal_units(8, lambda idx, ph: False) is None


# --------------------------------------------------------------------------------------------------
# criteria


@pytest.mark.parametrize(("raw", "expected"), [
    ("finite", "finite"), ("within_tol", "within_tol"), ("within-tol", "within_tol"), ("targets", "targets"),
    ({"snr_db": 60}, "snr_db >= 60"), ("snr_db >= 60", "snr_db >= 60"), ("snr>=72.5", "snr_db >= 72.5"),
    ("SNR_DB >= 1e2 dB", "snr_db >= 100"),
])
def test_criterion_parsing(raw, expected):
    assert str(BisectParams(criterion=raw).criterion) == expected


@pytest.mark.parametrize(("raw", "message"), [
    ("snr", "unknown criterion 'snr'"), (60, "bare number: write {snr_db: 60}"),
    ({"snr": 60}, "snr_db"), ({"snr_db": "loud"}, "snr_db"),
])
def test_criterion_errors_in_config(tmp_path, raw, message):
    reg = build_registry(get_plugin_manager())
    with pytest.raises(ConfigError) as exc:
        parse_config(make_config(tmp_path, precision=[{"bisect": {"criterion": raw}}]), registry=reg)
    assert any(p.startswith("precision.0.bisect.criterion") and message in p for p in exc.value.problems), exc.value.problems


def test_criterion_semantics():
    ok = {"finite": True, "nan_count": 0, "inf_count": 0, "within_tol": False, "snr_db": 61.0}
    assert _passes("finite", ok) and not _passes("within_tol", ok)
    assert _passes(Criterion.snr(60), ok) and not _passes(Criterion.snr(62), ok)
    assert _passes("targets", ok) and not _passes("targets", ok, targets=type("T", (), {"snr_db": 70})())
    nan = {**ok, "finite": False, "nan_count": 3, "snr_db": 90.0}
    assert not any(_passes(c, nan) for c in ("finite", "within_tol", "targets", Criterion.snr(0)))
    silent = {"finite": True, "nan_count": 0, "inf_count": 0, "snr_db": None}  # every reference silent
    assert _passes(Criterion.snr(60), {**silent, "within_tol": True})
    assert not _passes(Criterion.snr(60), {**silent, "within_tol": False})


# --------------------------------------------------------------------------------------------------
# magnitude rules and the torch unit's recording


def test_magnitude_rules():
    limit, acc = 65504 / 8, 65504.0
    assert keep_reason("conv", False, OpStats(max_abs=9000.0), limit, acc, True)[0] == "output"
    assert keep_reason("conv", False, OpStats(max_abs=1.0, max_abs_input=1e5), limit, acc, True)[0] == "input"
    assert keep_reason("conv", False, OpStats(max_abs=8000.0), limit, acc, True) is None
    assert keep_reason("conv", False, OpStats(nan=1), limit, acc, True)[0] == "non-finite"
    assert keep_reason("conv", False, None, limit, acc, True)[0] == "unseen"
    mean = OpStats(max_abs=0.1, max_abs_input=2.0, reduction_size=40000)  # sum bound 80000
    assert keep_reason("reduce_mean", False, mean, limit, acc, True)[0] == "reduction"
    assert keep_reason("reduce_mean", False, mean, limit, acc, False) is None
    small = OpStats(max_abs=3.0, max_abs_input=3.0, reduction_size=1000)  # 3000 linear, 9000 squared
    assert keep_reason("reduce_mean", False, small, limit, acc, True) is None
    assert keep_reason("reduce_mean", False, small, limit, 8000.0, True) is None  # linear bound 3000
    assert keep_reason("layer_norm", False, small, limit, 8000.0, True)[0] == "reduction"
    assert keep_reason("reduce_mean", True, small, limit, 8500.0, True)[0] == "reduction"  # std: squares
    assert keep_reason("reduce_mean", False, small, limit, 8500.0, True) is None


def test_torch_unit_records_reduction_sizes_and_squares():
    from htx_plugins.compute.torch_unit import TorchUnit

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm(64)
            self.gn = torch.nn.GroupNorm(2, 8)

        def forward(self, x, y):  # x [2, 8, 64], y [2, 10]
            a = self.ln(x)
            b = self.gn(x)
            return torch.softmax(y, dim=-1), (a + b).std(dim=(1, 2)) + x.mean()

    unit = TorchUnit(TorchUnit.Params(device="cpu"))
    x, y = torch.randn(2, 8, 64), torch.randn(2, 10)
    prep = unit.prepare(Net(), (x, y))
    ops = {op.name: op for op in unit.ops(prep)}
    stats = unit.record(prep, Assignment.all_fp32(), (x, y))
    assert stats["layer_norm_0"].reduction_size == 64
    assert stats["group_norm_0"].reduction_size == 4 * 64
    assert stats["softmax_0"].reduction_size == 10
    assert stats["reduce_mean_0"].reduction_size == 8 * 64 and ops["reduce_mean_0"].info.get("squares") is True
    assert stats["reduce_mean_1"].reduction_size == 2 * 8 * 64 and not ops["reduce_mean_1"].info.get("squares")


# --------------------------------------------------------------------------------------------------
# the planted-fault model through the real pipeline

BISECT = "bisect[criterion='finite']"
SINE, NOISE = "sine_440[duration=0.5]", "white_noise[amplitude=0.9,duration=0.5]"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """One run: all-fp16, bisect (finite) and magnitude on the planted-fault tiny model, two fixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and fair to a shared 2-core machine
    tmp = tmp_path_factory.mktemp("planted")
    plugin = planted_plugin()
    reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    cfg = parse_config(make_config(
        tmp, surgery=["planted-faults"],
        precision=["all-fp16", {"bisect": {"criterion": "finite"}}, "magnitude"],
        fixtures=[{"sine_440": {"duration": 0.5}}, {"white_noise": {"duration": 0.5, "amplitude": 0.9}}],
    ), registry=reg)
    try:
        with Store(cfg.store.path) as store:
            runner = Run(cfg, reg, store)
            run_id = runner.execute()
            spec = expand_grid(cfg)[0]
            prep = runner.builder.prepared(spec)
            trials = {(t.precision, t.fixture): t for t in store.trials([run_id])}
            yield {"cfg": cfg, "reg": reg, "plugin": plugin, "runner": runner, "spec": spec, "prep": prep,
                   "trials": trials, "run_id": run_id, "store": store, "planted": planted_ops(prep.ops), "db": cfg.store.path}
    finally:
        torch.set_num_threads(threads)


def test_planted_model_is_exact_in_fp32_and_fails_in_fp16(planted_run):
    r = planted_run
    runner, prep, spec = r["runner"], r["prep"], r["spec"]
    culprits = r["planted"]["culprits"]
    fp32 = runner.builder.session(spec, prep).evaluate(Assignment.all_fp32())
    assert fp32["snr_db"] > 120  # the gain stages are exact powers of two
    for t in (r["trials"][("all-fp16", f)] for f in (SINE, NOISE)):
        assert t.status == "failed" and t.reason.startswith("non-finite output")
    # the construction: exactly the planted ops are needed (each one missing breaks it)
    assert runner.builder.session(spec, prep).evaluate(Assignment.keep_fp32(prep.ops, culprits))["finite"]
    for c in culprits[:2]:
        assert not runner.builder.session(spec, prep).evaluate(Assignment.keep_fp32(prep.ops, set(culprits) - {c}))["finite"]


def test_bisect_returns_exactly_the_planted_set(planted_run):
    r = planted_run
    trial = r["trials"][(BISECT, SINE)]
    search = trial.info["search"]
    n = sum(op.compute for op in r["prep"].ops)
    assert sorted(search["fp32_ops"]) == sorted(r["planted"]["culprits"])
    assert search["status"] == "found" and search["passed"] and search["verified_step"] is not None
    evals = int(trial.metrics["evaluations"])
    assert evals == search["evaluations"] <= bound(4, n) < n
    log = json.loads(open(search["log"]).read())
    assert len(log["log"]) == evals and sorted(log["fp32_ops"]) == sorted(r["planted"]["culprits"])
    assert log["log"][0]["phase"] == "all-fp16" and not log["log"][0]["passed"]
    assert set(log["log"][0]["per_fixture"]) == {SINE, NOISE}
    assert trial.status == "ok" and trial.metrics["nan_count"] == 0
    assert trial.metrics["fp16_op_fraction"] == pytest.approx(1 - 4 / n)


def test_sensitivity_first_order_finds_the_planted_set_in_fewer_evaluations_than_bisect(planted_run):
    """The gradient pass flags ops whose FP16 output overflows (no evaluation spent): the planted set, verified."""
    from htx_plugins.precision.sensitivity import Sensitivity

    r = planted_run
    runner, prep, spec = r["runner"], r["prep"], r["spec"]
    result = Sensitivity(Sensitivity.Params(criterion="finite")).search(runner.builder.session(spec, prep).context())
    assert result.summary["rank_method"] == "first_order" and result.summary["passed"]
    assert sorted(result.summary["fp32_ops"]) == sorted(r["planted"]["culprits"])
    bisect_evals = int(r["trials"][(BISECT, SINE)].metrics["evaluations"])
    assert result.evaluations < bisect_evals, (result.evaluations, bisect_evals)


def test_magnitude_includes_the_planted_set_and_not_the_harmless_ops(planted_run):
    r = planted_run
    trial = r["trials"][("magnitude", SINE)]
    kept = set(trial.info["search"]["fp32_ops"])
    assert set(r["planted"]["culprits"]) <= kept
    assert not set(r["planted"]["harmless"]) & kept  # up1 stays far below the limit: FP16 is fine there
    assert trial.metrics["evaluations"] == 0 and trial.status == "ok"
    assert len(kept) < 0.2 * sum(op.compute for op in r["prep"].ops)


def test_leaderboard_shows_evaluation_counts(planted_run):
    r = planted_run
    rows = collect(r["store"], run=r["run_id"])
    evals = {row["precision"]: row["evaluations"] for row in rows}
    assert evals["all-fp16"] is None and evals["magnitude"] == 0
    assert evals[BISECT] == r["trials"][(BISECT, SINE)].metrics["evaluations"]
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(rich_table(rows))
    text = console.export_text()
    assert "evals" in text
    bisect_line = next(line for line in text.splitlines() if "bisect" in line)
    assert f" {evals[BISECT]} " in bisect_line


def test_nan_sources_names_the_planted_ops(planted_run):
    r = planted_run
    runner, prep, spec, p = r["runner"], r["prep"], r["spec"], r["planted"]
    (in_up2, in_down, out_up2, out_down) = p["culprits"]

    def sources(keep):
        a = Assignment.keep_fp32(prep.ops, keep)
        stats = runner.builder.session(spec, prep).record(a)
        return [s.name for s in find_nan_sources(stats, prep.ops, a)], stats

    names, stats = sources([])
    assert names == [in_up2]  # everything after it only propagates the overflow
    assert len(non_finite_ops(stats, prep.ops)) > 10
    assert sources([in_up2, in_down])[0] == [out_up2]
    assert sources([in_up2, out_up2])[0] == [in_down]  # down's FP16 input cast overflows
    assert sources(p["culprits"])[0] == []


def test_nan_sources_cli(planted_run, monkeypatch):
    from htx.cli import app, nan_sources_cmd
    from htx.plugins import load_registry

    r = planted_run
    in_up2 = r["planted"]["first_overflow"][0]
    monkeypatch.setattr(nan_sources_cmd, "load_registry", lambda: load_registry(extra_plugins=(r["plugin"],)))
    trial = r["trials"][("all-fp16", NOISE)]
    ref = f"{r['run_id']}/{trial.trial_id}"
    cli = CliRunner()
    res = cli.invoke(app, ["nan-sources", ref, "--db", r["db"], "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["fixture"] == NOISE and data["segments_recorded"] == [0]
    assert [s["name"] for s in data["sources"]] == [in_up2]
    src = data["sources"][0]
    assert src["type"] == "conv" and src["precision"] == "fp16" and src["inf"] > 0
    # max |input| of up2 is up1's output: 2**10 * max |white noise| (amplitude 0.9, clipped at 1)
    assert 500 < src["max_abs_input"] <= 1024
    res = cli.invoke(app, ["nan-sources", ref, "--db", r["db"]])
    assert res.exit_code == 0, res.output
    assert "1 source(s)" in res.stdout and in_up2 in res.stdout and "conv" in res.stdout
    # a search trial's assignment comes from its stored log: finite, so nothing to report
    bisect = r["trials"][(BISECT, SINE)]
    res = cli.invoke(app, ["nan-sources", f"{r['run_id']}/{bisect.trial_id}", "--db", r["db"]])
    assert res.exit_code == 0, res.output
    assert "search log" in res.stdout and "no op produced NaN/Inf" in res.stdout
    res = cli.invoke(app, ["nan-sources", "no-slash", "--db", r["db"]])
    assert res.exit_code == 1 and "expected RUN/TRIAL" in res.output and "Traceback" not in res.output
    res = cli.invoke(app, ["nan-sources", f"{r['run_id']}/ffffffffffff", "--db", r["db"]])
    assert res.exit_code == 1 and "has no trial 'ffffffffffff'" in res.output


def test_search_config_validates():
    reg = build_registry(get_plugin_manager())
    cfg = load_config(REPO_ROOT / "configs" / "search.yaml", reg)
    assert [p.name for p in cfg.precision] == ["all-fp16", "curated-fp32", "magnitude", "bisect"]


def test_magnitude_policy_uses_record(planted_run):
    """Magnitude through a hand-built context: one record call, no evaluation."""
    r = planted_run
    runner, prep, spec = r["runner"], r["prep"], r["spec"]
    calls = []

    def record(a):
        calls.append(a)
        return runner.builder.session(spec, prep).record(a)

    ctx = SearchContext(prep.ops, evaluate=lambda a: pytest.fail("magnitude must not evaluate"), record=record)
    result = Magnitude().search(ctx)
    assert calls == [Assignment.all_fp32()] and result.evaluations == 0
    assert set(r["planted"]["culprits"]) <= set(result.summary["fp32_ops"])
    strict = Magnitude(Magnitude.Params(headroom=1, reductions=False)).search(ctx)
    assert set(strict.summary["fp32_ops"]) <= set(result.summary["fp32_ops"])


def test_search_policies_on_the_coreml_emulator(tmp_path):
    """The policies use only the compute-unit contract: the same planted set on the Core ML emulator."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plugin = planted_plugin()
        reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
        cfg = parse_config(make_config(
            tmp_path, surgery=["planted-faults"], precision=[{"bisect": {"criterion": "finite"}}, "magnitude"],
            compute=[{"coreml": {"runtime": "emulated", "device": "cpu"}}],
        ), registry=reg)
        with Store(cfg.store.path) as store:
            runner = Run(cfg, reg, store)
            run_id = runner.execute()
            trials = {t.precision: t for t in store.trials([run_id])}
            spec = expand_grid(cfg)[0]
            prep = runner.builder.prepared(spec)
            assert prep.compute.runtime == "coreml:emulated"
            planted = planted_ops(prep.ops)  # MIL op names now, not the torch unit's
            n = sum(op.compute for op in prep.ops)
            bisect = trials[BISECT]
            assert sorted(bisect.info["search"]["fp32_ops"]) == sorted(planted["culprits"])
            assert bisect.status == "ok" and bisect.metrics["evaluations"] <= bound(4, n)
            kept = set(trials["magnitude"].info["search"]["fp32_ops"])
            assert set(planted["culprits"]) <= kept and not set(planted["harmless"]) & kept
            a = Assignment.all_fp16(prep.ops)
            stats = runner.builder.session(spec, prep).record(a)
            assert [s.name for s in find_nan_sources(stats, prep.ops, a)] == planted["first_overflow"]
    finally:
        torch.set_num_threads(threads)


def test_search_progress_shows_the_policys_criterion_best_verified_set_and_budget(planted_run):
    """Progress for every search: evaluations, this set, the best verified set (size, SNR) against the policy's
    own criterion, and the budget left."""
    from htx_plugins.precision.sensitivity import Sensitivity

    r = planted_run
    builder, prep, spec = r["runner"].builder, r["prep"], r["spec"]
    lines: list[str] = []
    say = builder.say
    builder.say = lines.append
    try:
        for policy in (Bisect(Bisect.Params(criterion="finite", max_evaluations=3, max_seconds=900)),
                       Sensitivity(Sensitivity.Params(criterion="finite", max_evaluations=500))):
            lines.clear()
            ctx = builder.session(spec, prep).context()
            result = policy.search(ctx)
            header, first = lines[0], lines[1]
            n = sum(op.compute for op in prep.ops)
            assert f"criterion finite over {n} compute ops" in header, header  # the total, said once
            budget = 2 if policy.name == "bisect" else 499
            assert f"{spec.precision.name} eval 1 " in first and f"left {budget} evals" in first, first
            assert all(len(line) <= 120 for line in lines), [line for line in lines if len(line) > 120]
            if policy.name == "bisect":  # stopped by its budget of 3: the first line also counts seconds down
                assert "budget 3 evaluations / 900 s" in header, header
                assert 800 < int(re.search(r"evals, (\d+) s", first).group(1)) <= 900, first
                continue
            n32 = sum(op.compute for op in prep.ops) - len(result.assignment.fp16)
            assert ctx.best is not None and ctx.n_fp32(ctx.best[0]) == n32 == 4  # what the progress line reports as best
            assert any("best 4 FP32 at" in line for line in lines) or len(lines) == 2, lines
    finally:
        builder.say = say
