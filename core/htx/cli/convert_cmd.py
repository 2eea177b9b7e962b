"""``htx convert CONFIG --surgery S --precision P --out model.mlpackage``: a real typed Core ML package.

The config's model is cut by the surgery, the precision policy chooses FP16/FP32 per op of the FP32
program (search policies search with the emulator on the config's fixtures), and coremltools converts
the traced model with that choice through its own ``FP16ComputePrecision(op_selector=...)``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from htx.cli.common import err, handle_errors, out
from htx.config import ExperimentConfig, PluginEntry, load_config
from htx.errors import HtxError
from htx.grid import TrialSpec
from htx.opmap import is_compute
from htx.plugins import Registry, load_registry


def pick_entry(cfg: ExperimentConfig, registry: Registry, axis: str, wanted: str | None) -> PluginEntry:
    """The config's entry named (or keyed) ``wanted`` on ``axis``, a bare registered plugin, or the config's first."""
    entries: list[PluginEntry] = getattr(cfg, axis)
    if wanted is None:
        return entries[0]
    for e in entries:
        if wanted in (e.name, e.key()):
            return e
    registry.get(axis, wanted)  # raises "unknown plugin ... Did you mean ...?"
    return PluginEntry(name=wanted)


def coreml_entry(cfg: ExperimentConfig) -> PluginEntry:
    """The config's first ``coreml`` compute entry run through the emulator (search policies evaluate with it)."""
    for e in cfg.compute:
        if e.name == "coreml":
            params = {k: v for k, v in e.params.items() if k in ("target", "accumulate", "device")}
            return PluginEntry(name="coreml", params={**params, "runtime": "emulated"})
    return PluginEntry(name="coreml", params={"runtime": "emulated"})


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
    from htx.runner import Runner
    from htx_plugins.compute.coreml.convert import package_size, trace, typed_convert
    from htx_plugins.compute.coreml.graph import read_program

    if out_path.suffix != ".mlpackage":
        raise HtxError(f"--out {out_path}: a Core ML ML program is a directory ending in .mlpackage, e.g. --out model.mlpackage")
    if out_path.exists() and not force:
        raise HtxError(f"{out_path} exists; pass --force to overwrite it or choose another --out")
    registry = load_registry()
    cfg = load_config(config, registry)
    s_entry = pick_entry(cfg, registry, "surgery", surgery)
    p_entry = pick_entry(cfg, registry, "precision", precision)
    c_entry = coreml_entry(cfg)
    if target is not None:
        from htx_plugins.compute.coreml.convert import TARGETS

        if target not in TARGETS:
            raise HtxError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
        c_entry = PluginEntry(name="coreml", params={**c_entry.params, "target": target})
    unit_params = registry.get("compute", "coreml").Params(**c_entry.params)
    e = err()
    runner = Runner(cfg, registry, store=None, on_message=lambda m: e.print(m, highlight=False, markup=False))  # type: ignore[arg-type]
    policy = runner._plugin("precision", p_entry)
    if policy.is_search:
        runner.load()  # fixtures and FP32 references to search against
    else:
        from htx.models import load_model

        runner.loaded = load_model(cfg.model)
    spec = TrialSpec(0, "convert", s_entry, p_entry, cfg.stft[0], c_entry, 0, cfg.fixtures[0].label)
    t0 = time.perf_counter()
    prep = runner.prepared_for(spec)
    ainfo = runner.assignment_for(spec)
    assignment = ainfo.assignment
    e.print(f"{p_entry.key()}: {len(assignment.fp16)} of {sum(op.compute for op in prep.ops)} compute ops in FP16 "
            f"(chosen in {time.perf_counter() - t0:.1f} s)", highlight=False)

    spec_cac, mix = runner._example_inputs(None, prep.surgery)
    host_args, _ = prep.inner.host_pre(spec_cac, mix)
    t1 = time.perf_counter()
    traced, sig = trace(prep.inner, tuple(host_args))
    mlmodel, seen = typed_convert(traced, sig, unit_params.target, frozenset(assignment.fp16))
    convert_s = time.perf_counter() - t1
    typed = read_program(mlmodel._mil_program)
    if out_path.exists():
        shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(out_path))

    compute_ops = [n for n in typed.nodes if is_compute(n.type)]  # casts are layout ops
    fp16_ops = [n for n in compute_ops if any(o.dtype == "fp16" for o in n.outputs)]
    unmatched = sorted(set(assignment.fp16) - seen)
    share = len(fp16_ops) / len(compute_ops) if compute_ops else 0.0
    o = out()
    o.print(f"wrote {out_path} ({package_size(out_path) / 2**20:.2f} MiB) in {convert_s:.1f} s", highlight=False)
    o.print(f"surgery {s_entry.key()}, precision {p_entry.key()}, target {unit_params.target}, coremltools op_selector", highlight=False)
    o.print(f"FP16 ops: {len(fp16_ops)} of {len(compute_ops)} compute ops ({100 * share:.1f}%); "
            f"{sum(n.type == 'cast' for n in typed.nodes)} cast ops inserted", highlight=False)
    if unmatched:
        o.print(f"warning: {len(unmatched)} assigned op(s) not seen by the op_selector (renamed by coremltools after its FP16 pass): "
                f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}", highlight=False)

