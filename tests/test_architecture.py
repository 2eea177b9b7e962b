"""The house: one axes table, enforced plugin contracts, a core that names no plugin and has no import cycle.

The meta-test walks every hook and every registered plugin (as datasette's does); the toy-axis test adds a
fifth axis with one table entry plus its hookspec and sees config, grid, trial ids, store, leaderboard,
``show`` and ``validate`` follow.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_config
from htx import hookspecs
from htx.api import (
    Assignment,
    OpInfo,
    Params,
    Plugin,
    PrecisionPolicy,
    StaticPolicy,
    STFTBackend,
    Surgery,
    demucs_ispec,
    demucs_spec,
)
from htx.axes import AXES, Axis, add_axis, axis_names
from htx.cli import app
from htx.config import parse_config
from htx.errors import ConfigError, PluginError
from htx.grid import expand_grid
from htx.leaderboard import collect, columns
from htx.plugins import build_registry, get_plugin_manager, load_registry, module_plugin
from htx.run import Run
from htx.store import Store, TrialRecord

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "htx"


# --- the meta-test ----------------------------------------------------------------------------------


def test_every_hook_is_documented_and_every_plugin_keeps_its_contract():
    readme = (ROOT / "README.md").read_text()
    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("htx_register_") and callable(f)]
    assert {a.hook for a in AXES} <= set(hooks) and "htx_register_commands" in hooks
    for name in hooks:
        fn = getattr(hookspecs, name)
        assert hasattr(fn, "htx_spec"), f"{name} is not a hookspec"
        assert fn.__doc__ and len(fn.__doc__.split()) > 15, f"{name}: its docstring must state the contract"
        assert f"`{name}`" in readme, f"the README does not document the hook {name}"
    reg = load_registry()
    seen = 0
    for axis in AXES:
        for name, r in reg.by_kind[axis.name].items():
            cls = r.cls
            seen += 1
            assert cls.name == name and issubclass(cls, axis.base)
            assert issubclass(cls.Params, Params) and cls.Params.model_config.get("strict") is True, name
            assert cls.Params.model_config.get("extra") == "forbid", name
            assert not inspect.isabstract(cls), name
            doc = inspect.getdoc(cls) or ""
            assert "Example" in doc and "::" in doc, f"{axis.name} {name!r}: the docstring needs a complete example"
            cls(cls.Params())  # default options are valid
    assert seen >= 15


def test_base_classes_are_abstract_and_name_what_is_missing():
    class NoBuild(Surgery):
        """No build.

        Example::

            surgery: [no-build]
        """

        name = "no-build"

    plugin = module_plugin("incomplete", htx_register_surgeries=lambda register: register(NoBuild))
    with pytest.raises(PluginError, match="does not implement build"):
        build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    for base in (Surgery, StaticPolicy, STFTBackend):
        assert inspect.isabstract(base)

    class Neither(PrecisionPolicy):
        """Neither static nor search."""

        name = "neither"

    plugin = module_plugin("neither", htx_register_precision_policies=lambda register: register(Neither))
    with pytest.raises(PluginError, match="neither StaticPolicy"):
        build_registry(get_plugin_manager(extra_plugins=(plugin,)))


def test_params_are_strict():
    reg = load_registry()
    for bad in ({"max_evaluations": "20"}, {"max_evaluations": True}):
        problems = []
        try:
            parse_config(make_config(Path("/tmp"), precision=[{"bisect": bad}]), registry=reg, check_model=False)
        except ConfigError as exc:
            problems = exc.problems
        assert any("max_evaluations" in p for p in problems), (bad, problems)
    # ints still fill float options (YAML writes 60 for 60.0)
    parse_config(make_config(Path("/tmp"), precision=[{"bisect": {"criterion": {"snr_db": 60}}}]), registry=reg, check_model=False)


def test_hook_functions_without_hookimpl_are_reported():
    module = types.ModuleType("forgetful_plugin")

    def htx_register_precision_policies(register):  # no @hookimpl: pluggy would ignore it silently
        register(None)

    module.htx_register_precision_policies = htx_register_precision_policies
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_plugin_manager(extra_plugins=(module,))
    msgs = [str(w.message) for w in caught]
    assert any("forgetful_plugin" in m and "htx_register_precision_policies" in m and "@hookimpl" in m for m in msgs), msgs


# --- one axes table ---------------------------------------------------------------------------------


class ToyBase(Plugin):
    """A toy axis's base class."""

    kind = "toy"


class Loud(ToyBase):
    """A toy entry.

    Example config::

        toy: [loud]
    """

    name = "loud"


class Quiet(ToyBase):
    """Another toy entry.

    Example config::

        toy: [quiet]
    """

    name = "quiet"


def _toy_hookspecs() -> types.ModuleType:
    mod = types.ModuleType("toy_hookspecs")

    @hookspecs.hookspec
    def htx_register_toys(register):
        """Register toys."""

    mod.htx_register_toys = htx_register_toys
    return mod


def test_a_fifth_axis_is_one_table_entry_plus_its_hookspec(tmp_path):
    toy = Axis("toy", "htx_register_toys", ToyBase, default="quiet", title="toy", nesting=4, hookspecs=_toy_hookspecs())
    plugin = module_plugin("toys", htx_register_toys=lambda register: (register(Loud), register(Quiet)))
    with add_axis(toy):
        assert axis_names()[-1] == "toy"
        reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
        assert reg.names("toy") == ["loud", "quiet"]
        cfg = parse_config(make_config(tmp_path, toy=["loud", "quiet"]), registry=reg)
        specs = expand_grid(cfg)
        assert len(specs) == 2 and {s.toy.name for s in specs} == {"loud", "quiet"}
        assert len({s.trial_id for s in specs}) == 2
        with pytest.raises(ConfigError, match="Did you mean 'loud'"):
            parse_config(make_config(tmp_path, toy=["lout"]), registry=reg)
        assert parse_config(make_config(tmp_path), registry=reg).toy[0].name == "quiet"  # the axis default
        with Store(tmp_path / "htx.sqlite") as store:
            run_id = Run(cfg, reg, store).execute()
            recs = store.trials([run_id])
            assert sorted(r.toy for r in recs) == ["loud", "quiet"] and all(r.status == "ok" for r in recs)
            rows = collect(store, run=run_id)
        assert "toy" in columns() and sorted(r["toy"] for r in rows) == ["loud", "quiet"]
    assert "toy" not in axis_names() and "toy" not in columns()


def test_an_old_store_gains_a_column_for_a_new_axis(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run_id = store.create_run("x", {}, None, "0", "h")
    toy = Axis("toy", "htx_register_toys", ToyBase, default="quiet", title="toy", nesting=4, hookspecs=_toy_hookspecs())
    with add_axis(toy), Store(tmp_path / "s.sqlite") as store:
        store.write_trial(TrialRecord(run_id, "t1", 0, "f", "ok", surgery="s", precision="p", stft="b", compute="c", toy="loud"))
        assert store.trials([run_id])[0].toy == "loud"


def test_axes_are_named_in_one_place():
    """Outside the table, no core module spells the four axes out as a list."""
    offenders = []
    for path in CORE.rglob("*.py"):
        if path.name == "axes.py":
            continue
        text = path.read_text()
        for pattern in ('"surgery", "precision", "stft", "compute"', "'surgery', 'precision', 'stft', 'compute'",
                        "rec.surgery, rec.precision", "spec.surgery, spec.precision"):
            if pattern in text:
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert not offenders, offenders


# --- core names no plugin, no cycles ----------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level) for every ``import``/``from`` in ``path``; ``TYPE_CHECKING`` imports are left out
    (types only: no import at run time, so no cycle)."""
    tree = ast.parse(path.read_text())
    type_only = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found.extend((a.name, id(node) in top) for a in node.names)
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_core_imports_no_plugin_and_has_no_import_cycle():
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for mod, at_top in _imports(path):
            assert not mod.startswith("htx_plugins"), f"{name} imports the plugin module {mod}"
            if mod.startswith("htx"):
                target = mod if mod in modules else mod.rpartition(".")[0]
                if target in modules and target != name:
                    deps.add(target)
                    assert at_top or mod.startswith("htx.executors.ray_backend"), (
                        f"{name} imports {mod} inside a function: import at the top (or use TYPE_CHECKING)")
        graph[name] = deps
    # a package __init__ that imports nothing is no edge; look for a cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if d.startswith(n + ".") or n.startswith(d + ".") and not graph.get(d):
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_no_core_module_over_400_lines():
    """Past 400 lines a second job is hiding inside a module (STYLE.md)."""
    big = {str(p.relative_to(ROOT)): n for p in CORE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big


def test_builtin_plugins_import_only_the_public_api():
    """Built-in plugins use htx.api and nothing else from the core: whatever a built-in does, an outside plugin
    can do with the same imports (TYPE_CHECKING imports count too: a type a plugin needs belongs in the API)."""
    offenders = []
    for path in sorted((ROOT / "plugins" / "htx_plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {m}" for m in mods
                          if (m == "htx" or m.startswith("htx.")) and m != "htx.api"]
    assert not offenders, "\n".join(offenders)
    import htx.api

    missing = [n for n in htx.api.__all__ if not hasattr(htx.api, n)]
    assert not missing and len(set(htx.api.__all__)) == len(htx.api.__all__), missing


# --- STFT contract enforcement ----------------------------------------------------------------------


class ExtraFrame(STFTBackend):
    """Returns one frame too many.

    Example::

        stft: [extra-frame]
    """

    name = "extra-frame"

    def stft(self, x, n_fft=4096):
        z = demucs_spec(x, n_fft)
        return torch.cat([z, z[..., -1:]], dim=-1)

    def istft(self, z, length, n_fft=4096):
        return demucs_ispec(z[..., :-1], length, n_fft)


class Sloppy(STFTBackend):
    """Right shape, slightly wrong values (a 1e-3 relative error).

    Example::

        stft: [sloppy]
    """

    name = "sloppy"

    def stft(self, x, n_fft=4096):
        return demucs_spec(x, n_fft) * (1 + 1e-3)

    def istft(self, z, length, n_fft=4096):
        return demucs_ispec(z, length, n_fft) / (1 + 1e-3)


def test_stft_shape_is_checked_and_parity_is_recorded_and_marked(tmp_path):
    plugin = module_plugin("stfts", htx_register_stft_backends=lambda register: (register(ExtraFrame), register(Sloppy)))
    reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    cfg = parse_config(make_config(tmp_path, stft=["torch", "extra-frame", "sloppy"]), registry=reg)
    with Store(tmp_path / "htx.sqlite") as store:
        run_id = Run(cfg, reg, store).execute()
        recs = {r.stft: r for r in store.trials([run_id])}
        rows = {r["stft"]: r for r in collect(store, run=run_id)}
    bad = recs["extra-frame"]
    assert bad.status == "failed"
    assert "'extra-frame'" in bad.reason and "ceil(L / hop)" in bad.reason and "2049" not in bad.reason
    assert recs["torch"].metrics["stft_parity"] < 1e-6 and rows["torch"]["stft_parity_ok"] is True
    assert 5e-4 < recs["sloppy"].metrics["stft_parity"] < 2e-3 and rows["sloppy"]["stft_parity_ok"] is False
    res = CliRunner().invoke(app, ["leaderboard", "--db", str(tmp_path / "htx.sqlite")])
    assert res.exit_code == 0 and "≠" in res.output and "stft_rtol" in res.output


# --- found defects ----------------------------------------------------------------------------------


def test_search_log_names_are_the_same_in_every_process(tmp_path):
    code = (
        "from conftest import make_config\n"
        "from htx.search_session import search_log_name\nfrom htx.config import parse_config\nfrom htx.grid import expand_grid\n"
        "from htx.plugins import load_registry\nfrom pathlib import Path\n"
        "reg = load_registry()\n"
        "cfg = parse_config(make_config(Path('/tmp'), precision=[{'bisect': {'criterion': 'finite'}}]), registry=reg, check_model=False)\n"
        "spec = expand_grid(cfg)[0]\nprint(search_log_name(spec, reg.create('precision', 'bisect', spec.precision.params)))\n"
    )
    names = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
        names.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert len(names) == 1 and next(iter(names)).startswith("search-full-hybrid-torch-bisect-")


def test_gpu_bench_clip_is_a_generated_song():
    from htx_plugins.compute.gpu_bench import test_clip

    clip, what = test_clip(2.0)
    assert what.startswith("generated song") and tuple(clip.shape) == (2, 88200)
    assert float(clip.abs().max()) > 0.01


def test_static_policy_example_in_the_docstring_runs(tmp_path):
    """The StaticPolicy docstring's example is a complete plugin."""
    code = _docstring_code(StaticPolicy)
    ns: dict = {}
    exec(compile(code, "<docstring>", "exec"), ns)
    module = types.ModuleType("docstring_plugin")
    module.htx_register_precision_policies = ns["htx_register_precision_policies"]
    reg = build_registry(get_plugin_manager(extra_plugins=(module,)))
    cls = reg.get("precision", "conv-fp32")
    ops = [OpInfo("conv_0", "conv"), OpInfo("add_0", "add")]
    assert cls(cls.Params()).select(ops) == Assignment(frozenset({"add_0"}))




def _docstring_code(cls: type) -> str:
    code = inspect.getdoc(cls).split("::", 1)[1]
    end = code.find("\n\n``")
    code = code if end < 0 else code[:end]
    return "\n".join(line[4:] if line.startswith("    ") else line for line in code.splitlines())


def test_the_surgery_docstring_is_enough_to_write_a_surgery(tmp_path):
    """The Surgery docstring's example imports no built-in and runs as a real trial."""
    code = _docstring_code(Surgery)
    assert "htx_plugins" not in code
    ns: dict = {}
    exec(compile(code, "<Surgery docstring>", "exec"), ns)
    module = types.ModuleType("docstring_surgery")
    module.htx_register_surgeries = ns["htx_register_surgeries"]
    reg = build_registry(get_plugin_manager(extra_plugins=(module,)))
    cfg = parse_config(make_config(tmp_path, surgery=["my-time-only", "time-only"]), registry=reg)
    with Store(tmp_path / "htx.sqlite") as store:
        run_id = Run(cfg, reg, store).execute()
        recs = {r.surgery: r for r in store.trials([run_id])}
    assert recs["my-time-only"].status == "ok", recs["my-time-only"].reason
    # the same cut as the built-in time-only (cross: skip keeps none of the cross layers; ours has no transformer)
    assert recs["my-time-only"].metrics["snr_db"] is not None
