"""``htx bench onnx``: htx's answer on ONNX Runtime against the FP16 tools people use today, side by side.

On the same model, fixtures and criterion, in one run:

- onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)`` (everything FP16);
- onnxconverter-common's ``auto_convert_mixed_precision`` with a ``validate_fn`` on the same SNR criterion (the
  inner model's outputs on one segment, FP16 against FP32);
- htx's ``sensitivity`` on the ``onnx`` unit (ranked on the torch unit by portable key, verified on ONNX Runtime).

For each: whether it produced a model that ONNX Runtime loads and that meets the criterion through the real
pipeline on every fixture, evaluations, wall time, FP32 nodes, worst SNR and the ONNX Runtime latency of the
result. A peer that fails is recorded with its error verbatim: that is a result.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
import yaml
from rich.table import Table

from htx.api import (
    Assignment,
    Criterion,
    Session,
    err,
    handle_errors,
    load_registry,
    out,
    parse_config,
    write_record,
)


def _session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _forward(sess: Any) -> Any:
    names = [i.name for i in sess.get_inputs()]

    def forward(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = sess.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, args)})
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outs)

    return forward


def _latency_ms(sess: Any, args: tuple[torch.Tensor, ...], repeats: int) -> float:
    names = [i.name for i in sess.get_inputs()]
    feed = {n: a.numpy() for n, a in zip(names, args)}
    sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000 / args[0].shape[0]


def _fp32_nodes(model: Any) -> int:
    """Compute nodes that run in FP32 in a converted model (those reading no FP16 value)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *model.graph.input]}
    elem.update({i.name: i.data_type for i in model.graph.initializer})
    skip = {"Cast", "Constant", "Identity", "Shape", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Concat", "Slice",
            "Gather", "Split", "Expand", "ConstantOfShape", "Range", "Tile"}
    return sum(1 for n in model.graph.node if n.op_type not in skip and any(elem.get(v) == 1 for v in n.input if v)
               and not any(elem.get(v) == 10 for v in n.input if v))


def _snr(a: np.ndarray, b: np.ndarray) -> float:
    noise = float(((a.astype(np.float64) - b) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((a.astype(np.float64) ** 2).sum()) / noise)


def run(model: Any = "demo", fixtures: tuple[str, ...] = ("sine_440", "white_noise", "music_a"), snr_db: float = 70.0,
        repeats: int = 5, max_seconds: float = 900.0, out_json: str | None = None, say: Any = print) -> dict[str, Any]:
    reg = load_registry()
    crit = Criterion.snr(snr_db)
    with tempfile.TemporaryDirectory() as tmp:
        data = {"name": "bench-onnx", "model": model, "fixtures": list(fixtures), "compute": ["onnx"], "stft": ["torch"],
                "precision": [{"sensitivity": {"criterion": {"snr_db": snr_db}, "max_seconds": max_seconds}}],
                "store": {"path": f"{tmp}/htx.sqlite", "cache_dir": "experiments/cache", "artifacts_dir": f"{tmp}/runs"},
                "trial_timeout_s": 1e6}
        cfg = parse_config(data, "bench onnx", reg)
        session = Session(cfg, reg, say)
        session.load()
        spec = session.spec()
        prep = session.prepared(spec)
        fp32_model = prep.prepared.model
        args = session.model_inputs(spec)
        feed = {i.name: a.numpy() for i, a in zip(fp32_model.graph.input, args)}
        rows: dict[str, dict[str, Any]] = {}

        def judge(name: str, converted: Any, evaluations: int | None, wall: float, error: str | None = None) -> None:
            row: dict[str, Any] = {"evaluations": evaluations, "wall_s": wall, "error": error, "loads": False}
            if converted is not None and error is None:
                try:
                    sess = _session(converted)
                    row["loads"] = True
                except Exception as exc:
                    row["error"] = f"onnxruntime refused the model: {str(exc).splitlines()[0]}"
                    sess = None
                if sess is not None:
                    ev = session.evaluate_forward(spec, _forward(sess))
                    row.update(snr_db=ev.snr_db, finite=ev.finite, passes=crit.passes(ev), fp32_nodes=_fp32_nodes(converted),
                               latency_ms=_latency_ms(sess, args, repeats))
            rows[name] = row
            say(f"{name}: {row}")

        # onnxconverter-common, everything FP16 ------------------------------------------------------------
        from onnxconverter_common import auto_mixed_precision, float16

        t0 = time.perf_counter()
        try:
            conv = float16.convert_float_to_float16(fp32_model, keep_io_types=True)
            judge("onnxconverter-common convert_float_to_float16", conv, 0, time.perf_counter() - t0)
        except Exception as exc:
            judge("onnxconverter-common convert_float_to_float16", None, 0, time.perf_counter() - t0,
                  f"{type(exc).__name__}: {exc}".splitlines()[0])

        # onnxconverter-common, mixed precision with the same criterion ------------------------------------
        calls = [0]

        def validate(res1: list[np.ndarray], res2: list[np.ndarray]) -> bool:
            calls[0] += 1
            return all(np.isfinite(b).all() and _snr(a, b) >= snr_db for a, b in zip(res1, res2))

        t0 = time.perf_counter()
        try:
            mixed = auto_mixed_precision.auto_convert_mixed_precision(fp32_model, feed, validate_fn=validate, keep_io_types=True)
            judge("onnxconverter-common auto_convert_mixed_precision", mixed, calls[0], time.perf_counter() - t0)
        except Exception as exc:
            judge("onnxconverter-common auto_convert_mixed_precision", None, calls[0], time.perf_counter() - t0,
                  f"{type(exc).__name__}: {exc}".splitlines()[0])

        # htx sensitivity on the onnx unit ---------------------------------------------------------------
        t0 = time.perf_counter()
        try:
            found = session.assignment(session.spec(precision=cfg.precision[0]))
            wall = time.perf_counter() - t0
            typed = prep.compute.typed(prep.prepared, found.assignment).model
            judge(f"htx sensitivity (onnx unit, {snr_db:g} dB)", typed, found.evaluations, wall)
            rows[f"htx sensitivity (onnx unit, {snr_db:g} dB)"]["status"] = found.search.get("status")
        except Exception as exc:
            judge(f"htx sensitivity (onnx unit, {snr_db:g} dB)", None, None, time.perf_counter() - t0,
                  f"{type(exc).__name__}: {exc}".splitlines()[0] + "\n" + traceback.format_exc(limit=3))
        judge("fp32 (reference point)", fp32_model, 0, 0.0)
        judge("htx all-fp16 (onnx unit)", prep.compute.typed(prep.prepared, Assignment.all_fp16(prep.ops)).model, 0, 0.0)
    record = {"benchmark": "onnx", "model": model, "fixtures": list(fixtures), "criterion": str(crit), "repeats": repeats,
              "rows": rows, "n_compute_ops": sum(op.compute for op in prep.ops),
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if out_json:
        write_record(out_json, record)
    return record


@handle_errors
def command(
    model: str = typer.Option("demo", "--model", help="demo, or a YAML model entry such as '{random: {seed: 0}}'"),
    fixtures: str = typer.Option("sine_440,white_noise,music_a", "--fixtures", help="comma-separated fixtures"),
    snr_db: float = typer.Option(70.0, "--snr-db", help="the criterion every tool is held to (worst SNR over fixtures)"),
    repeats: int = typer.Option(5, help="timed ONNX Runtime runs per result (median)"),
    max_seconds: float = typer.Option(900.0, help="htx's search budget"),
    out_json: Path = typer.Option(Path("experiments/benchmarks/onnx.json"), "--out", help="where to write the record"),
) -> None:
    """htx's sensitivity on ONNX Runtime against onnxconverter-common's FP16 converters, side by side."""
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        raise typer.BadParameter("htx bench onnx needs onnxconverter-common: pip install 'htx[onnx-bench]'") from None
    e = err()
    rec = run(yaml.safe_load(model), tuple(f.strip() for f in fixtures.split(",") if f.strip()), snr_db, repeats, max_seconds,
              str(out_json), lambda m: e.print(m, highlight=False, markup=False))
    table = Table(title=f"htx bench onnx: {rec['criterion']} on {rec['model']} ({', '.join(rec['fixtures'])}), ONNX Runtime CPU")
    for col in ("tool", "loads", "meets", "worst SNR dB", "FP32 nodes", "evals", "wall s", "ms/segment", "error"):
        table.add_column(col, justify="left" if col in ("tool", "error") else "right", overflow="fold")
    for name, r in rec["rows"].items():
        snr = r.get("snr_db")
        table.add_row(name, "yes" if r["loads"] else "no", {True: "yes", False: "no"}.get(r.get("passes"), "-"),
                      "" if snr is None else f"{snr:.1f}", str(r.get("fp32_nodes", "")), str(r.get("evaluations") or 0),
                      f"{r['wall_s']:.1f}", "" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f}", (r.get("error") or "")[:160])
    out().print(table)
    e.print(f"wrote {out_json}", highlight=False)
