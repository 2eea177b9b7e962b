"""``htx plugins``: every plugin with its version and what it registered, per kind."""

from __future__ import annotations

import json
from collections import defaultdict

import typer
from rich.table import Table

from htx.axes import axis_names
from htx.console import handle_errors, out
from htx.plugins import load_registry


@handle_errors
def plugins(fmt: str = typer.Option("table", "--format", help="table or json")) -> None:
    """List installed plugins: name, version and the classes each registered per kind."""
    reg = load_registry()
    by_plugin: dict[str, dict[str, list[str]]] = defaultdict(lambda: {k: [] for k in axis_names()})
    for kind in axis_names():
        for name, r in sorted(reg.by_kind[kind].items()):
            by_plugin[r.plugin][kind].append(name)
    if fmt == "json":
        data = [
            {"name": p, "version": reg.plugin_versions.get(p, "?"), **{k: v for k, v in kinds.items() if v}}
            for p, kinds in sorted(by_plugin.items())
        ] + [{"name": p, "version": reg.plugin_versions.get(p, "?"), "disabled": why} for p, why in sorted(reg.disabled.items())]
        out().print_json(json.dumps(data))
        return
    table = Table(title="htx plugins")
    table.add_column("plugin")
    table.add_column("version")
    for kind in axis_names():
        table.add_column(kind)
    for p, kinds in sorted(by_plugin.items()):
        table.add_row(p, reg.plugin_versions.get(p, "?"), *(", ".join(kinds[k]) for k in axis_names()))
    for p, why in sorted(reg.disabled.items()):
        table.add_row(f"{p} [red](disabled)[/red]", reg.plugin_versions.get(p, "?"), why, *([""] * (len(axis_names()) - 1)))
    out().print(table)
