from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from htx.api import Assignment, SearchPolicy, StaticPolicy, Surgery
from htx.cli import app
from htx.errors import PluginError
from htx.plugins import build_registry, get_plugin_manager, module_plugin

BUILTINS = {
    "surgery": {"full-hybrid", "external-norm", "decomposed-attention", "safe-norm", "time-only"},
    "precision": {"fp32", "all-fp16", "curated-fp32", "bisect", "magnitude"},
    "stft": {"torch", "numpy", "vdsp"},
    "compute": {"torch", "coreml"},
}


def test_builtins_registered_through_entry_points():
    reg = build_registry(get_plugin_manager())
    for kind, names in BUILTINS.items():
        assert names <= set(reg.names(kind)), kind
    # the built-ins come from the `htx` distribution's entry points, like any third-party plugin
    assert reg.by_kind["precision"]["fp32"].plugin == "htx_plugins.precision"
    eps = {ep.value for ep in md.entry_points(group="htx") if ep.dist is not None and ep.dist.name == "htx"}
    assert {"htx_plugins.surgery", "htx_plugins.precision", "htx_plugins.stft", "htx_plugins.compute"} <= eps


class Half(StaticPolicy):
    """Every other compute op in FP16."""

    name = "half-of-them"

    def select(self, ops):
        compute = [op.name for op in ops if op.compute]
        return Assignment(frozenset(compute[::2]))


def test_inline_plugin_registers_and_is_fresh_per_manager():
    plugin = module_plugin("inline_half", htx_register_precision_policies=lambda register: register(Half))
    reg = build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    assert reg.get("precision", "half-of-them") is Half
    assert reg.by_kind["precision"]["half-of-them"].plugin == "inline_half"
    # a new manager does not see it: no global state
    assert "half-of-them" not in build_registry(get_plugin_manager()).names("precision")


def test_duplicate_name_names_both_plugins():
    class FakeFP32(StaticPolicy):
        """Clashes with the built-in."""

        name = "fp32"

        def select(self, ops):
            return Assignment.all_fp32()

    plugin = module_plugin("clash_plugin", htx_register_precision_policies=lambda register: register(FakeFP32))
    with pytest.raises(PluginError) as info:
        build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    msg = str(info.value)
    assert "Duplicate precision name 'fp32'" in msg
    assert "htx_plugins.precision" in msg and "clash_plugin" in msg


def test_wrong_base_class_and_misspelled_hook():
    plugin = module_plugin("wrong_kind", htx_register_surgeries=lambda register: register(Half))
    with pytest.raises(PluginError, match="not a Surgery subclass"):
        build_registry(get_plugin_manager(extra_plugins=(plugin,)))
    bad = module_plugin("typo_plugin", htx_register_precision_polices=lambda register: None)
    with pytest.raises(PluginError, match="unknown hook"):
        get_plugin_manager(extra_plugins=(bad,))


def test_hook_that_raises_reports_plugin_name():
    def boom(register):
        raise RuntimeError("kaput")

    plugin = module_plugin("exploding", htx_register_surgeries=boom)
    with pytest.raises(PluginError, match="Error loading plugin 'exploding'.*kaput"):
        build_registry(get_plugin_manager(extra_plugins=(plugin,)))


def _fake_entry_points(monkeypatch, value: str, dist_name: str = "broken-dist"):
    class FakeDist:
        name = dist_name
        version = "9.9"

    ep = md.EntryPoint(name="broken", value=value, group="htx")
    ep = ep._for(FakeDist()) if hasattr(ep, "_for") else ep
    real = md.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        return md.EntryPoints(eps + [ep]) if kw.get("group") == "htx" else real(**kw)

    monkeypatch.setattr(md, "entry_points", fake)


def test_broken_plugin_import_is_reported(monkeypatch):
    _fake_entry_points(monkeypatch, "htx_no_such_module_xyz")
    with pytest.raises(PluginError, match="Error loading plugin 'broken'.*No module named 'htx_no_such_module_xyz'"):
        get_plugin_manager()


def test_disable_autoload_skips_third_party(monkeypatch):
    _fake_entry_points(monkeypatch, "htx_no_such_module_xyz")
    monkeypatch.setenv("HTX_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = build_registry(get_plugin_manager())  # the broken third-party entry point is not even imported
    assert BUILTINS["precision"] <= set(reg.names("precision"))


def test_base_class_docstrings_carry_examples():
    for cls in (Surgery, StaticPolicy, SearchPolicy):
        assert "@hookimpl" in cls.__doc__ and "register(" in cls.__doc__


def test_outside_package_installed_and_loaded_through_entry_point(tmp_path, monkeypatch):
    """Install tests/outside_plugin for real (pip, into a temporary target) and load it via its entry point."""
    src = Path(__file__).parent / "outside_plugin"
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )
    monkeypatch.syspath_prepend(str(target))
    import importlib

    importlib.invalidate_caches()
    reg = build_registry(get_plugin_manager())
    assert "conv-fp32" in reg.names("precision")
    entry = reg.by_kind["precision"]["conv-fp32"]
    assert entry.plugin == "htx_outside_policy" and entry.version == "0.3.1"
    res = CliRunner().invoke(app, ["plugins", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert '"name": "htx_outside_policy"' in res.output and '"version": "0.3.1"' in res.output
    monkeypatch.setenv("HTX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "conv-fp32" not in build_registry(get_plugin_manager()).names("precision")
    sys.modules.pop("htx_outside_policy", None)


def test_plugins_command_lists_builtins():
    res = CliRunner().invoke(app, ["plugins"])
    assert res.exit_code == 0, res.output
    for line_start in ("htx_plugins.compute", "htx_plugins.precision", "htx_plugins.stft", "htx_plugins.surgery"):
        assert line_start in res.output
    assert "curated-fp32" in res.output and "full-hybrid" in res.output
