"""CLI commands of the ``coreml`` unit: ``htx convert`` and ``htx bench coreml``, added through
``htx_register_commands`` (see :mod:`htx_plugins.compute`).

``htx convert CONFIG --surgery S --precision P --out model.mlpackage`` is a thin path to the unit's
:meth:`~htx_plugins.compute.coreml.unit.CoreMLUnit.export`: the trial builder prepares the config's model
with the surgery on the (emulated) Core ML unit, the policy chooses its assignment (a search policy
searches with the emulator on the config's fixtures), and ``export`` writes the typed package.
``htx export RUN/TRIAL`` does the same for a stored trial, without searching again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from htx.api import (
    ExperimentConfig,
    HtxError,
    PluginEntry,
    Registry,
    Session,
    err,
    handle_errors,
    load_config,
    load_registry,
    out,
)
from htx_plugins.compute.coreml import bench
from htx_plugins.compute.coreml.convert import TARGETS, package_size


def pick_entry(cfg: ExperimentConfig, registry: Registry, axis: str, wanted: str | None) -> PluginEntry:
    """The config's entry named (or keyed) ``wanted`` on ``axis``, a bare registered plugin, or the config's first."""
    entries = cfg.entries(axis)
    if wanted is None:
        return entries[0]
    for e in entries:
        if wanted in (e.name, e.key()):
            return e
    registry.get(axis, wanted)  # raises "unknown plugin ... Did you mean ...?"
    return PluginEntry(name=wanted)


def coreml_entry(cfg: ExperimentConfig, target: str | None) -> PluginEntry:
    """The config's first ``coreml`` compute entry run through the emulator (search policies evaluate with it)."""
    params: dict = {}
    for e in cfg.compute:
        if e.name == "coreml":
            params = {k: v for k, v in e.params.items() if k in ("target", "accumulate", "device")}
            break
    if target is not None:
        if target not in TARGETS:
            raise HtxError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
        params["target"] = target
    return PluginEntry(name="coreml", params={**params, "runtime": "emulated"})


@handle_errors
def convert(
    config: Path = typer.Argument(..., help="experiment config (YAML): its model, surgeries, precisions, fixtures"),
    surgery: str = typer.Option(None, "--surgery", help="surgery name (default: the config's first)"),
    precision: str = typer.Option(None, "--precision", help="precision policy name (default: the config's first)"),
    out_path: Path = typer.Option(..., "--out", help="where to write the .mlpackage"),
    target: str = typer.Option(None, "--target", help="iOS15, iOS16, iOS17 or iOS18 (default: the config's coreml target, else iOS18)"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
) -> None:
    """Convert the config's model to a Core ML .mlpackage with a precision policy applied per op."""
    check_out(out_path, force)
    registry = load_registry()
    cfg = load_config(config, registry)
    e = err()
    session = Session(cfg, registry, lambda m: e.print(m, highlight=False, markup=False), check_surgeries=False)
    spec = session.spec(surgery=pick_entry(cfg, registry, "surgery", surgery),
                        precision=pick_entry(cfg, registry, "precision", precision), compute=coreml_entry(cfg, target))
    t0 = time.perf_counter()
    prep = session.prepared(spec)
    assignment = session.assignment(spec).assignment  # a search policy loads the fixtures and FP32 references first
    e.print(f"{spec.precision.key()}: {len(assignment.fp16)} of {sum(op.compute for op in prep.ops)} compute ops in FP16 "
            f"(chosen in {time.perf_counter() - t0:.1f} s)", highlight=False)
    write_package(prep, assignment, out_path, f"surgery {spec.surgery.key()}, precision {spec.precision.key()}")


def check_out(out_path: Path, force: bool) -> None:
    if out_path.suffix != ".mlpackage":
        raise HtxError(f"--out {out_path}: a Core ML ML program is a directory ending in .mlpackage, e.g. --out model.mlpackage")
    if out_path.exists() and not force:
        raise HtxError(f"{out_path} exists; pass --force to overwrite it or choose another --out")


def write_package(prep, assignment, out_path: Path, what: str) -> None:
    """Export ``prep`` under ``assignment`` to ``out_path`` through the unit and print what it holds."""
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    t1 = time.perf_counter()
    prep.compute.export(prep.prepared, assignment, out_path)
    convert_s = time.perf_counter() - t1
    report = prep.prepared.export_report
    share = report["fp16_ops"] / report["compute_ops"] if report["compute_ops"] else 0.0
    o = out()
    o.print(f"wrote {out_path} ({package_size(out_path) / 2**20:.2f} MiB) in {convert_s:.1f} s", highlight=False)
    o.print(f"{what}, target {prep.prepared.conversion.target}, coremltools op_selector", highlight=False)
    o.print(f"FP16 ops: {report['fp16_ops']} of {report['compute_ops']} compute ops ({100 * share:.1f}%); "
            f"{report['casts']} cast ops inserted", highlight=False)
    unmatched = report["unmatched"]
    if unmatched:
        o.print(f"warning: {len(unmatched)} assigned op(s) not seen by the op_selector (renamed by coremltools after its FP16 pass): "
                f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}", highlight=False)


def bench_coreml(
    segment: float = typer.Option(7.8, help="segment length in seconds (the released HTDemucs models use 7.8)"),
    repeats: int = typer.Option(5, help="timed repeats of each, interleaved (medians reported)"),
    device: str = typer.Option("cpu", help="device of the emulator and the torch baseline: cpu or cuda"),
    cache_dir: str = typer.Option(None, help="conversion cache to use (default: a fresh temporary one, so the first conversion is measured)"),
    fp16: bool = typer.Option(True, help="also time the all-FP16 emulation"),
    out_json: str = typer.Option("experiments/benchmarks/coreml.json", "--out", help="where to write the raw JSON"),
) -> None:
    """Full-size HTDemucs on the Core ML unit: conversion cache, emulator speed and peak memory."""
    bench.run(segment=segment, repeats=repeats, device=device, cache_dir=cache_dir, fp16=fp16, out_json=out_json)
