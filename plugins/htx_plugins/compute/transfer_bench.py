"""``htx bench transfer``: one assignment on torch, Core ML (emulated) and ONNX Runtime, side by side.

People search where evaluations are cheap (a GPU, the torch unit) and deploy elsewhere (Core ML on the
Neural Engine, ONNX Runtime). This benchmark runs one search policy on the torch unit, moves its FP32 set to the
Core ML unit (emulated) and to the ``onnx`` unit (where installed) through the portable op keys
(:func:`htx.api.transfer`), and evaluates all of them on the same fixtures with the same reference; all-FP16
and FP32 on each give the context. ONNX Runtime executes FP16 kernels the way a deployed model does, so it
checks the other two. The goal: the SNRs within 3 dB of each other at a 60 dB bar on the demo model.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import typer
import yaml
from rich.table import Table

from htx.api import (
    Assignment,
    Session,
    err,
    handle_errors,
    load_registry,
    out,
    parse_config,
    transfer,
    write_record,
)


def _types(ops: list[Any], assignment: Assignment) -> dict[str, int]:
    return dict(Counter(op.type for op in ops if op.compute and op.name not in assignment.fp16))


@handle_errors
def command(
    policy: str = typer.Option("{bisect: {criterion: {snr_db: 60}}}", "--policy", help="the search, as a config entry (YAML)"),
    fixtures: str = typer.Option("sine_440,white_noise", "--fixtures", help="comma-separated fixtures"),
    device: str = typer.Option("auto", "--device", help="torch unit and emulator device: auto, cpu, cuda"),
    model: str = typer.Option("demo", "--model", help="demo, or a YAML model entry such as '{random: {seed: 0}}'"),
    out_path: Path = typer.Option(None, "--out", help="write the result as JSON (e.g. experiments/benchmarks/transfer-demo.json)"),
) -> None:
    """Search on the torch unit, apply the answer on the Core ML unit (emulated): both SNRs side by side."""
    e = err()
    say = lambda m: e.print(m, highlight=False, markup=False)  # noqa: E731
    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    reg = load_registry()
    tmp = tempfile.mkdtemp(prefix="htx-bench-transfer-")
    data = {
        "name": "bench-transfer", "model": yaml.safe_load(model), "fixtures": [f.strip() for f in fixtures.split(",") if f.strip()],
        "precision": [yaml.safe_load(policy)], "stft": ["torch"],
        "compute": [{"torch": {"device": dev}}, {"coreml": {"runtime": "emulated", "device": dev}}, "onnx"],
        "store": {"path": f"{tmp}/htx.sqlite", "cache_dir": "experiments/cache", "artifacts_dir": f"{tmp}/runs"},
        "trial_timeout_s": 1e6,
    }
    cfg = parse_config(data, "bench transfer", reg)
    session = Session(cfg, reg, say)
    session.load()
    spec_t = session.spec(compute=cfg.compute[0])
    spec_c = session.spec(compute=cfg.compute[1])
    spec_o = session.spec(compute=cfg.compute[2])
    onnx_ok, onnx_why = reg.create("compute", "onnx").available()
    t0 = time.perf_counter()
    prep_t = session.prepared(spec_t)
    say(f"searching with {spec_t.precision.key()} on {prep_t.compute.label} ({sum(o.compute for o in prep_t.ops)} compute ops) ...")
    found = session.assignment(spec_t)
    search_s = time.perf_counter() - t0
    keys = [op.key for op in prep_t.ops if op.compute and op.name not in found.assignment.fp16]
    on_torch = session.evaluate(spec_t, found.assignment)
    prep_c = session.prepared(spec_c)
    moved = transfer(prep_t.ops, keys, prep_c.ops)
    plan = [
        ("torch: search answer", spec_t, prep_t, found.assignment),
        ("torch: all-fp16", spec_t, prep_t, Assignment.all_fp16(prep_t.ops)),
        ("coreml (emu): transferred answer", spec_c, prep_c, moved.assignment),
        ("coreml (emu): all-fp16", spec_c, prep_c, Assignment.all_fp16(prep_c.ops)),
        ("coreml (emu): fp32", spec_c, prep_c, Assignment.all_fp32()),
    ]
    moved_o = None
    if onnx_ok:
        prep_o = session.prepared(spec_o)
        moved_o = transfer(prep_t.ops, keys, prep_o.ops)
        plan += [("onnxruntime: transferred answer", spec_o, prep_o, moved_o.assignment),
                 ("onnxruntime: all-fp16", spec_o, prep_o, Assignment.all_fp16(prep_o.ops)),
                 ("onnxruntime: fp32", spec_o, prep_o, Assignment.all_fp32())]
    else:
        say(f"onnx unit unavailable ({onnx_why}): no ONNX Runtime rows")
    rows: dict[str, dict[str, Any]] = {}
    for label, spec, prep, a in plan:
        m = on_torch if label == "torch: search answer" else session.evaluate(spec, a)
        rows[label] = {"snr_db": m["snr_db"], "finite": m["finite"], "fp32_ops": sum(o.compute for o in prep.ops) - len(a.fp16),
                       "fp32_types": _types(prep.ops, a), **prep.compute.placement(prep.prepared, a).metrics()}
    base = rows["torch: search answer"]["snr_db"]
    gaps = {unit: (rows[f"{unit}: transferred answer"]["snr_db"] - base)
            for unit in ("coreml (emu)", "onnxruntime") if f"{unit}: transferred answer" in rows
            and rows[f"{unit}: transferred answer"]["snr_db"] is not None and base is not None}
    gap = gaps.get("coreml (emu)")
    table = Table(title=f"htx bench transfer: {spec_t.precision.key()} on torch:{dev}, applied to Core ML (emulated) and ONNX Runtime")
    for col in ("assignment", "worst SNR dB", "FP32 ops", "partitions", "casts", "FP32 types"):
        table.add_column(col, justify="left" if col in ("assignment", "FP32 types") else "right")
    for label, r in rows.items():
        snr = "" if r["snr_db"] is None else f"{r['snr_db']:.2f}"
        types = ", ".join(f"{t} {n}" for t, n in sorted(r["fp32_types"].items(), key=lambda x: -x[1])[:6])
        table.add_row(label, snr, str(r["fp32_ops"]), str(r.get("partitions", "")), str(r.get("casts", "")), types)
    o = out()
    o.print(table)
    o.print(f"transfer to Core ML: {moved.summary()}" + (f"; to ONNX: {moved_o.summary()}" if moved_o else "")
            + f"; search: {found.evaluations} evaluations in {search_s:.1f} s", highlight=False)
    for unit, g in gaps.items():
        o.print(f"SNR on {unit} minus SNR on torch: {g:+.2f} dB ({'within' if abs(g) <= 3 else 'outside'} the 3 dB goal)", highlight=False)
    if out_path is not None:
        write_record(out_path, {
            "benchmark": "transfer", "policy": spec_t.precision.key(), "device": dev, "host": platform.node(),
            "torch": torch.__version__, "fixtures": data["fixtures"], "model": data["model"], "search_s": search_s,
            "evaluations": found.evaluations, "transfer": moved.summary(), "snr_gap_db": gap, "snr_gaps_db": gaps,
            "transfer_onnx": moved_o.summary() if moved_o else None, "onnx": onnx_why or "available", "rows": rows,
            "fp32_keys": keys, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        e.print(f"wrote {out_path}", highlight=False)
