"""The public plugin API seen from a plugin author: errors name the plugin and method, typed results are
checked where they are handed over, views survive junk, and a broken third-party plugin disables itself."""

from __future__ import annotations

import importlib.metadata as md
import json
import sqlite3
import sys

from typer.testing import CliRunner

from conftest import make_config
from htx.api import (
    Assignment,
    FrontierPoint,
    SearchContext,
    SearchPolicy,
    SearchResult,
    StaticPolicy,
    build_registry,
    get_plugin_manager,
    load_registry,
    module_plugin,
    parse_config,
)
from htx.cli import app
from htx.run import Run
from htx.store import Store


class ListSelect(StaticPolicy):
    """Returns a list instead of an Assignment.

    Example::

        precision: [list-select]
    """

    name = "list-select"

    def select(self, ops):
        return [op.name for op in ops]


class Raises(StaticPolicy):
    """Raises from select.

    Example::

        precision: [raises]
    """

    name = "raises"

    def select(self, ops):
        raise ValueError("kaboom in select")


class JunkResult(SearchPolicy):
    """Returns a SearchResult whose fields have the wrong types.

    Example::

        precision: [junk-result]
    """

    name = "junk-result"

    def search(self, ctx: SearchContext):
        return SearchResult(Assignment(), status=5, frontier=[{"snr_db_bar": "x"}])  # type: ignore[arg-type]


class JunkDetails(SearchPolicy):
    """A well-typed answer whose free-form details are junk: views must show it without crashing.

    Example::

        precision: [junk-details]
    """

    name = "junk-details"

    def search(self, ctx: SearchContext):
        ctx.begin("finite", max_evaluations=3)
        a = Assignment.all_fp16(ctx.ops)
        ctx.evaluate(a, "all-fp16")
        return ctx.result(a, "junk below", details={"rank_method": {"a": [1, 2]}, "cost": [None], "fp32_ops": 7,
                                                   "frontier": "nope", "criterion": 3, "partitions": "many"},
                          frontier=[FrontierPoint(snr_db_bar=40.0, passed=True, fp32_ops=0)])


def _registry():
    plugin = module_plugin("hostile_plugin", htx_register_precision_policies=lambda register: [
        register(c) for c in (ListSelect, Raises, JunkResult, JunkDetails)])
    return build_registry(get_plugin_manager(extra_plugins=(plugin,)))


def _run(tmp_path, precision):
    reg = _registry()
    cfg = parse_config(make_config(tmp_path, precision=precision), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        return run.run_id, {t.precision: t for t in store.trials([run.run_id])}


def test_errors_name_the_plugin_and_method_and_show_prints_the_traceback(tmp_path):
    run_id, trials = _run(tmp_path, ["list-select", "raises", "junk-result"])
    assert trials["list-select"].status == "failed"
    assert trials["list-select"].reason == "precision 'list-select'.select() returned list, expected Assignment"
    assert trials["raises"].reason == "precision 'raises'.select() raised ValueError: kaboom in select"
    junk = trials["junk-result"].reason
    assert junk.startswith("precision 'junk-result'.search() returned a SearchResult with status is int"), junk
    assert "frontier[0] is dict, expected FrontierPoint" in junk
    db = str(tmp_path / "htx.sqlite")
    res = CliRunner().invoke(app, ["show", run_id, "--db", db, "--trial", trials["raises"].trial_id])
    assert res.exit_code == 0, res.output
    assert "stored traceback" in res.output and "kaboom in select" in res.output and 'raise ValueError("kaboom' in res.output
    res = CliRunner().invoke(app, ["show", run_id, "--db", db, "--trial", "nope"])
    assert res.exit_code == 1 and "has no trial 'nope'" in res.output and "Traceback" not in res.output


def test_show_and_report_never_crash_on_junk_search_data(tmp_path):
    run_id, trials = _run(tmp_path, ["junk-details", "fp32"])
    assert trials["junk-details"].status == "ok", trials["junk-details"].reason
    db = tmp_path / "htx.sqlite"
    # and junk the core never writes: a stored summary from an old htx or a tampered store
    with sqlite3.connect(db) as conn:
        (info,) = conn.execute("SELECT info_json FROM trials WHERE trial_id = ?", (trials["fp32"].trial_id,)).fetchone()
        conn.execute("UPDATE trials SET info_json = ? WHERE trial_id = ?",
                     (json.dumps({**json.loads(info), "search": {"fp32_ops": 5, "frontier": [None, {"snr_db_bar": "x"}],
                                                                 "criterion": 9, "evaluations": "many", "log": 17}}),
                      trials["fp32"].trial_id))
    conn.close()
    for args in (["show", run_id, "--db", str(db)], ["report", run_id, "--db", str(db), "--out", str(tmp_path / "rep")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "Traceback" not in res.output
    show = CliRunner().invoke(app, ["show", run_id, "--db", str(db)]).output
    assert "search junk-details on torch" in show and "search fp32 on torch" in show  # every search, junk included
    assert (tmp_path / "rep" / "report.html").exists()


def test_show_prints_every_search_not_one_per_label(tmp_path):
    """Two searches with the same label on two units: both are shown."""
    reg = _registry()
    cfg = parse_config(make_config(tmp_path, precision=["junk-details"],
                                   compute=[{"torch": {"device": "cpu"}}, {"torch": {"device": "cpu", "casts": "lazy"}}]),
                       registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
    res = CliRunner().invoke(app, ["show", run.run_id, "--db", str(tmp_path / "htx.sqlite")])
    assert res.exit_code == 0, res.output
    assert res.output.count("search junk-details on torch") == 2, res.output


BROKEN_PLUGIN = '''
from htx.api import StaticPolicy, hookimpl

class NoSelect(StaticPolicy):
    """Forgot select."""
    name = "no-select"

@hookimpl
def htx_register_precision_policies(register):
    register(NoSelect)
'''


def test_a_broken_third_party_plugin_disables_itself(tmp_path, monkeypatch):
    (tmp_path / "htx_broken_thirdparty.py").write_text(BROKEN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))

    class FakeDist:
        name = "broken-dist"
        version = "0.0.1"

    ep = md.EntryPoint(name="broken", value="htx_broken_thirdparty", group="htx")
    ep = ep._for(FakeDist()) if hasattr(ep, "_for") else ep
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: md.EntryPoints([*real(**kw), ep]) if kw.get("group") == "htx" else real(**kw))
    try:
        reg = load_registry()  # what every command uses: no exception
        assert "htx_broken_thirdparty" in reg.disabled and "does not implement select" in reg.disabled["htx_broken_thirdparty"]
        assert "no-select" not in reg.names("precision") and "fp32" in reg.names("precision")
        res = CliRunner().invoke(app, ["plugins"])
        assert res.exit_code == 0, res.output
        assert "disabled" in res.output and "htx_plugins.precision" in res.output
        res = CliRunner().invoke(app, ["plugins", "--format", "json"])
        assert '"disabled"' in res.output
    finally:
        sys.modules.pop("htx_broken_thirdparty", None)


def test_the_disabled_message_names_the_autoload_switch(capsys):
    from htx.plugins import warn_disabled

    warn_disabled("htx_some_plugin_xyz", "it failed to import")
    err = capsys.readouterr().err
    assert "plugin 'htx_some_plugin_xyz' is disabled: it failed to import" in err
    assert "HTX_DISABLE_PLUGIN_AUTOLOAD=1" in err


# --- the op-identity kit's check ---------------------------------------------------------------------


def _miskeyed_units():
    from dataclasses import replace

    from htx_plugins.compute.torch_unit import TorchUnit

    class Retyped(TorchUnit):
        """Names conv_transpose ``conv`` (a unit author's vocabulary slip).

        Example::

            compute: [retyped]
        """

        name = "retyped"

        def ops(self, prepared):
            return [replace(op, type="conv") if op.type == "conv_transpose" else op for op in super().ops(prepared)]

    class Misplaced(TorchUnit):
        """Puts the decoders' ops under a module path the torch unit never runs.

        Example::

            compute: [misplaced]
        """

        name = "misplaced"

        def ops(self, prepared):
            return [replace(op, module="dec." + op.module) if op.module.startswith("decoder") else op
                    for op in super().ops(prepared)]

    return module_plugin("miskeyed", htx_register_compute_units=lambda register: [register(Retyped), register(Misplaced)])


def test_check_unit_keys_lists_every_mismatch(tmp_path):
    from htx.api import Session, check_unit_keys

    reg = build_registry(get_plugin_manager(extra_plugins=(_miskeyed_units(),)))
    session = Session(parse_config(make_config(tmp_path), registry=reg), reg)
    same = check_unit_keys(session, {"torch": {"casts": "per-op"}})
    assert same.identical and same.ok and same.exact == same.reference_ops > 0
    retyped = check_unit_keys(session, "retyped")
    n_ct = sum(k.split("|")[1] == "conv_transpose" for k in retyped.only_reference)
    assert n_ct > 0 and len(retyped.only_unit) == n_ct  # every renamed op listed, on both sides
    assert all("|conv|" in k for k in retyped.only_unit) and retyped.by_rule == retyped.only_unit
    assert retyped.ok and not retyped.identical  # an assignment still reaches them: only --strict fails it
    misplaced = check_unit_keys(session, "misplaced")
    assert not misplaced.ok and misplaced.unmapped and all(k.startswith("dec.decoder") for k in misplaced.unmapped)
    assert "NOT consistent" in misplaced.lines()[-1]


def test_check_unit_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its default config caches in ./experiments/cache: not in the checkout
    res = CliRunner().invoke(app, ["check-unit", "{torch: {casts: per-op}}", "--strict"])
    assert res.exit_code == 0, res.output
    assert "identical: every key on both sides" in res.output
    res = CliRunner().invoke(app, ["check-unit", "no-such-unit"])
    assert res.exit_code != 0 and "unknown plugin 'no-such-unit'" in res.output and "Traceback" not in res.output


def test_the_hybrid_surgery_in_the_docs_runs_as_a_real_trial(tmp_path):
    """docs/surgery.md's complete hybrid surgery imports only htx.api and matches full-hybrid in FP32."""
    import re
    import types
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "surgery.md").read_text()
    code = re.search(r"<!-- example: hybrid-surgery -->\n```python\n(.*?)```", doc, re.S).group(1)
    assert "htx_plugins" not in code and re.findall(r"^from htx[.\w]* import", code, re.M) == ["from htx.api import"]
    ns: dict = {}
    exec(compile(code, "docs/surgery.md", "exec"), ns)
    module = types.ModuleType("doc_hybrid_surgery")
    module.htx_register_surgeries = ns["htx_register_surgeries"]
    reg = build_registry(get_plugin_manager(extra_plugins=(module,)))
    cfg = parse_config(make_config(tmp_path, surgery=["my-host-norm", "full-hybrid"]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        recs = {t.surgery: t for t in store.trials([run.run_id])}
    assert recs["my-host-norm"].status == "ok", recs["my-host-norm"].reason
    assert recs["my-host-norm"].metrics["snr_db"] > 100 and recs["full-hybrid"].metrics["snr_db"] > 100


def test_a_compute_unit_that_returns_no_forward_is_named():
    """``compile`` must return a callable and ``compile_segment`` a callable or None: anything else is a
    PluginError naming the unit and method, not a TypeError deep in a trial."""
    import pytest

    from htx.calls import call_plugin, check_callable, optional
    from htx.errors import PluginError
    from htx_plugins.compute.torch_unit import TorchUnit

    class Junk(TorchUnit):
        name = "junk-unit"

        def compile(self, prepared, assignment):
            return 7

        def compile_segment(self, prepared, assignment, wrap):
            return "graph"

    unit = Junk(Junk.Params(device="cpu"))
    with pytest.raises(PluginError, match=r"compute 'junk-unit'.compile\(\) returned int, expected a callable$"):
        call_plugin(unit, "compile", None, None, check=check_callable)
    with pytest.raises(PluginError, match=r"compile_segment\(\) returned str, expected a callable or None$"):
        call_plugin(unit, "compile_segment", None, None, None, check=optional(check_callable))
    assert call_plugin(unit, "compile_segment", None, None, None, check=optional(lambda v, w: v)) == "graph"
    assert optional(check_callable)(None, "w") is None
