"""Plugin manager factory and the per-kind registries built from it.

Built-in plugins are the entry points of the ``htx`` distribution in group ``htx``; third-party plugins
are entry points of other distributions in the same group. ``HTX_DISABLE_PLUGIN_AUTOLOAD=1`` skips the
third-party ones (built-ins still load).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from htx import __version__, hookspecs
from htx.axes import AXES, axis_names
from htx.errors import ConfigError, PluginError
from htx.interfaces import Params, Plugin, SearchPolicy, StaticPolicy

ENTRY_POINT_GROUP = "htx"
DISABLE_ENV = "HTX_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DIST = "htx"
# Used when htx runs from a source tree without being installed (no entry-point metadata).
DEFAULT_PLUGINS = ("htx_plugins.surgery", "htx_plugins.precision", "htx_plugins.stft", "htx_plugins.compute")

HOOK_PREFIX = "htx_register_"


#: What a broken third-party plugin's message ends with.
DISABLED_HINT = (f"Every other plugin and command still works. Fix or uninstall it, or set {DISABLE_ENV}=1 to skip "
                 "third-party plugins.")

OnBroken = Callable[[str, str], None]


class HtxPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers each plugin's distribution version and which plugins are built in."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.versions: dict[str, str] = {}
        self.builtin: set[str] = set()
        #: third-party plugins left out because they are broken: name -> why
        self.disabled: dict[str, str] = {}


@dataclass
class Registered:
    cls: type[Plugin]
    plugin: str  # name of the pluggy plugin (module) that registered it
    version: str


@dataclass
class Registry:
    """Every registered plugin class, by kind and name."""

    by_kind: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in axis_names()})
    plugin_versions: dict[str, str] = field(default_factory=dict)
    #: third-party plugins disabled because they are broken: plugin name -> why (``htx plugins`` lists them)
    disabled: dict[str, str] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> type[Plugin]:
        entries = self.by_kind.get(kind, {})
        if name not in entries:
            raise ConfigError([unknown_name_message(kind, name, list(entries))])
        return entries[name].cls

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind.get(kind, {}))

    def create(self, kind: str, name: str, raw_params: dict[str, Any] | None = None) -> Plugin:
        cls = self.get(kind, name)
        return cls(cls.Params(**(raw_params or {})))


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{kind}: unknown plugin {name!r}.{hint} Available: {', '.join(sorted(available)) or '(none)'}"


def _dist_version(ep: md.EntryPoint) -> str:
    try:
        return ep.dist.version if ep.dist is not None else "?"
    except Exception:  # pragma: no cover - broken metadata
        return "?"


def unmarked_hooks(module: Any) -> list[str]:
    """Functions of ``module`` named like an htx hook but lacking ``@hookimpl`` (pluggy ignores them)."""
    names = {n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)} | {a.hook for a in AXES}
    found = []
    for attr in sorted(vars(module)) if hasattr(module, "__dict__") else []:
        fn = getattr(module, attr, None)
        if attr in names and callable(fn) and not hasattr(fn, f"{hookspecs.PROJECT}_impl"):
            found.append(attr)
    return found


def _warn_unmarked(module: Any, name: str) -> None:
    missing = unmarked_hooks(module)
    if missing:
        warnings.warn(
            f"plugin {name!r} defines {', '.join(missing)} without @hookimpl, so htx never calls "
            f"{'it' if len(missing) == 1 else 'them'}: decorate with `@htx.hookspecs.hookimpl`",
            stacklevel=3,
        )


def get_plugin_manager(load_entry_points: bool = True, extra_plugins: tuple[Any, ...] = (),
                       on_broken: OnBroken | None = None) -> HtxPluginManager:
    """Build a fresh plugin manager with the built-ins, entry-point plugins and ``extra_plugins``.

    Each call builds a new manager, so tests can register inline plugins without leaking state. A third-party
    plugin that fails to import or declares an unknown hook raises :class:`PluginError`, unless ``on_broken`` is
    given: it is then left out and ``on_broken(name, why)`` is told (what htx commands do).
    """
    pm = HtxPluginManager()
    pm.add_hookspecs(hookspecs)
    for axis in AXES:
        if axis.hookspecs is not None:
            pm.add_hookspecs(axis.hookspecs)
    disabled = os.environ.get(DISABLE_ENV, "").strip() not in ("", "0", "false", "False")
    builtin_seen = False
    if load_entry_points:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ""
            is_builtin = dist == BUILTIN_DIST
            if disabled and not is_builtin:
                continue
            if pm.get_plugin(ep.value) is not None or pm.is_blocked(ep.value):
                continue
            try:
                module = ep.load()
            except Exception as exc:
                where = f"entry point {ep.value!r} of {dist or 'unknown distribution'}"
                if on_broken is not None and not is_builtin:
                    _disable(pm, on_broken, ep.value, f"it failed to import ({where}): {type(exc).__name__}: {exc}")
                    continue
                raise PluginError(f"Error loading plugin {ep.name!r} ({where}): {exc}\n{traceback.format_exc()}") from exc
            _warn_unmarked(module, ep.value)
            pm.register(module, name=ep.value)
            pm.versions[ep.value] = _dist_version(ep)
            if is_builtin:
                pm.builtin.add(ep.value)
            builtin_seen = builtin_seen or is_builtin
    if not builtin_seen:
        for modname in DEFAULT_PLUGINS:
            if pm.get_plugin(modname) is None:
                pm.register(importlib.import_module(modname), name=modname)
                pm.versions[modname] = __version__
                pm.builtin.add(modname)
    for extra in extra_plugins:
        name = getattr(extra, "__name__", None) or repr(extra)
        _warn_unmarked(extra, name)
        pm.register(extra, name=name)
        pm.versions[name] = getattr(extra, "__version__", "inline")
    while True:
        try:
            pm.check_pending()
            return pm
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) if exc.plugin is not None else None
            if on_broken is None or name is None or name in pm.builtin:
                raise PluginError(f"Plugin declares an unknown hook: {exc}") from exc
            pm.unregister(exc.plugin)
            _disable(pm, on_broken, name, f"it declares an unknown hook: {exc}")


def _disable(pm: HtxPluginManager, on_broken: OnBroken, name: str, why: str) -> None:
    pm.disabled[name] = why
    on_broken(name, why)


def contract_problems(cls: type[Plugin], kind: str) -> list[str]:
    """What ``cls`` lacks to be registered as a ``kind`` plugin (empty when it is complete)."""
    problems = []
    if not cls.name:
        problems.append("has no `name`")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, Params)):
        problems.append("its `Params` is not a subclass of htx.api.Params")
    if kind == "precision" and not issubclass(cls, (StaticPolicy, SearchPolicy)):
        problems.append("subclasses neither StaticPolicy (select) nor SearchPolicy (search)")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        problems.append(f"does not implement {', '.join(missing)}")
    return problems


def build_registry(pm: pluggy.PluginManager, on_broken: OnBroken | None = None) -> Registry:
    """Call every registration hook and collect the classes, rejecting duplicates within a kind.

    A plugin whose registration breaks the contract (a class missing a method, a duplicate name, a hook that
    raises) raises :class:`PluginError`, unless ``on_broken`` is given and the plugin is not built in: then
    everything it registered is left out and ``on_broken(name, why)`` is told."""
    registry = Registry()
    versions: dict[str, str] = dict(getattr(pm, "versions", {}))
    registry.plugin_versions = versions
    builtin: set[str] = set(getattr(pm, "builtin", set()))
    registry.disabled = dict(getattr(pm, "disabled", {}))
    for axis in AXES:
        kind, base = axis.name, axis.base
        hook = getattr(pm.hook, axis.hook)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(cls: Any, *, _plugin: str = plugin_name, _kind: str = kind, _base: type = base) -> None:
                if not (isinstance(cls, type) and issubclass(cls, _base)):
                    raise PluginError(f"plugin {_plugin!r} registered {cls!r} as a {_kind}, but it is not a {_base.__name__} subclass")
                cls = typing.cast(type[Plugin], cls)
                problems = contract_problems(cls, _kind)
                if problems:
                    raise PluginError(
                        f"plugin {_plugin!r} registered {cls.__module__}.{cls.__qualname__} as a {_kind}, but it "
                        + "; ".join(problems) + f". See the {_base.__name__} docstring in htx.api."
                    )
                existing = registry.by_kind[_kind].get(cls.name)
                if existing is not None and existing.cls is not cls:
                    raise PluginError(
                        f"Duplicate {_kind} name {cls.name!r}: registered by plugin {existing.plugin!r} "
                        f"({existing.cls.__module__}.{existing.cls.__qualname__}) and by plugin {_plugin!r} "
                        f"({cls.__module__}.{cls.__qualname__}). Rename one of them."
                    )
                registry.by_kind[_kind][cls.name] = Registered(cls, _plugin, versions.get(_plugin, "?"))

            if plugin_name in registry.disabled:
                continue
            try:
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"Error loading plugin {plugin_name!r}: {axis.hook} raised {exc!r}\n{traceback.format_exc()}") from exc
            except PluginError as exc:
                if on_broken is None or plugin_name in builtin:
                    raise
                registry.disabled[plugin_name] = str(exc).splitlines()[0]
                on_broken(plugin_name, registry.disabled[plugin_name])
    for kind in registry.by_kind:  # a disabled plugin registers nothing, not even what it registered before failing
        registry.by_kind[kind] = {n: r for n, r in registry.by_kind[kind].items() if r.plugin not in registry.disabled}
    return registry


def warn_disabled(name: str, why: str) -> None:
    """How a command tells that a broken third-party plugin was disabled (stderr, once per plugin and process)."""
    if name in _WARNED:
        return
    _WARNED.add(name)
    sys.stderr.write(f"htx: plugin {name!r} is disabled: {why}\n  {DISABLED_HINT}\n")


_WARNED: set[str] = set()


def load_registry(extra_plugins: tuple[Any, ...] = ()) -> Registry:
    """The registry an htx command uses: built-ins, entry points (unless ``HTX_DISABLE_PLUGIN_AUTOLOAD``) and
    ``extra_plugins``. A broken third-party plugin is disabled with a message (:func:`warn_disabled`); the
    others and every command keep working."""
    return build_registry(get_plugin_manager(extra_plugins=extra_plugins, on_broken=warn_disabled), on_broken=warn_disabled)


def module_plugin(name: str, **hooks: Any) -> ModuleType:
    """Make an inline plugin module from hook functions (handy in tests and notebooks)."""
    module = ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookspecs.hookimpl(fn))
    return module
