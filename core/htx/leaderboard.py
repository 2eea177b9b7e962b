"""The leaderboard: rows read from the store, filters, sort keys, Pareto marks, and exports."""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import operator
from typing import Any

from htx.axes import AXES, axis_names
from htx.criteria import DEFAULT_SNR_DB, Criterion
from htx.errors import HtxError
from htx.store import Store, TrialRecord, clean_float

NUMERIC = {"snr_db", "max_abs_diff", "sdr_db", "sdr_delta_db", "fp16_op_fraction", "evaluations", "model_ms", "stft_ms",
           "istft_ms", "rtf", "stft_parity", "partitions", "casts"}
#: The default STFT parity bar (``targets.stft_rtol``) for runs stored before it existed.
DEFAULT_STFT_RTOL = 1e-5


def columns() -> list[str]:
    """Every exported column: the run and trial ids, one per axis (:data:`htx.axes.AXES`), then fixture, status and metrics."""
    return [
        "run", "trial", *axis_names(), "fixture", "runtime", "status", "pass", "pareto",
        "snr_db", "max_abs_diff", "sdr_db", "sdr_delta_db", "fp16_op_fraction", "partitions", "casts", "evaluations",
        "model_ms", "stft_ms", "istft_ms", "rtf", "stft_parity", "stft_parity_ok", "reason",
    ]


def __getattr__(name: str) -> Any:  # ``COLUMNS`` follows the axes table
    if name == "COLUMNS":
        return columns()
    raise AttributeError(name)


def _targets(store: Store, run_id: str, cache: dict[str, tuple[float, float]]) -> tuple[float, float]:
    if run_id not in cache:
        cfg = json.loads(store.get_run(run_id)["config_json"])
        t = cfg.get("targets", {})
        cache[run_id] = (float(t.get("snr_db", DEFAULT_SNR_DB)), float(t.get("stft_rtol", DEFAULT_STFT_RTOL)))
    return cache[run_id]


def _row(rec: TrialRecord, targets: tuple[float, float]) -> dict[str, Any]:
    snr_target, stft_rtol = targets
    m = rec.metrics
    row: dict[str, Any] = {
        "run": rec.run_id, "trial": rec.trial_id, **{a: rec.axes.get(a, "") for a in axis_names()},
        "fixture": rec.fixture, "runtime": rec.runtime or "", "status": rec.status,
        "pass": rec.status == "ok" and Criterion.targets().passes(m, snr_target),
        "pareto": False, "reason": rec.reason or "",
        "emulated": bool(rec.info.get("emulated")),
        "stft_emulated": bool(rec.info.get("stft_emulated")),
    }
    if row["stft_emulated"]:  # an STFT that imitates a platform library it cannot call here says so everywhere
        row["stft"] = f"{rec.stft} (emulated)"
    for key in NUMERIC:
        v = m.get(key)
        row[key] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    for key in ("evaluations", "partitions", "casts"):
        if row[key] is not None:
            row[key] = int(row[key])
    row["stft_parity_ok"] = None if row["stft_parity"] is None else bool(row["stft_parity"] <= stft_rtol)
    return row


def _score(row: dict[str, Any]) -> float | None:
    if row["snr_db"] is not None:
        return row["snr_db"]
    if row["max_abs_diff"] is not None:
        return -row["max_abs_diff"]
    return None


def _score_or(row: dict[str, Any], default: float) -> float:
    score = _score(row)
    return default if score is None else score


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Mark rows on the accuracy-vs-latency Pareto front, per run and fixture (successful rows only)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and _score(r) is not None and r["model_ms"] is not None:
            groups.setdefault((r["run"], r["fixture"]), []).append(r)
    for group in groups.values():
        scores = {id(r): _score_or(r, -math.inf) for r in group}  # every row here has a score
        for r in group:
            a, t = scores[id(r)], r["model_ms"]
            dominated = any(
                (scores[id(o)] >= a and o["model_ms"] <= t) and (scores[id(o)] > a or o["model_ms"] < t) for o in group if o is not r
            )
            r["pareto"] = not dominated


_OPS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def compile_where(expr: str) -> Any:
    """A safe row filter from an expression like ``precision == "all-fp16" and snr_db > 40``."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise HtxError(f"--where {expr!r}: {exc.msg}. Example: --where 'snr_db > 40 and stft == \"torch\"'") from None

    def check(node: ast.AST) -> None:
        """Refuse anything but comparisons of columns and constants joined by and/or/not, before any row is
        read (evaluation stops early at a false `and`, so it alone would miss a bad tail)."""
        if isinstance(node, ast.Expression):
            check(node.body)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                check(v)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            check(node.operand)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _OPS:
                    raise HtxError(f"--where: operator {type(op).__name__} is not supported")
            for v in [node.left, *node.comparators]:
                check(v)
        elif isinstance(node, ast.Name):
            if node.id not in ("True", "False", "None") and node.id not in columns():
                raise HtxError(f"--where: unknown column {node.id!r}. Columns: {', '.join(columns())}")
        elif isinstance(node, (ast.List, ast.Tuple)):
            for v in node.elts:
                check(v)
        elif not isinstance(node, ast.Constant):
            raise HtxError(f"--where: unsupported expression {ast.dump(node)[:60]}; use comparisons joined by and/or")

    check(tree)

    def ev(node: ast.AST, row: dict[str, Any]) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body, row)
        if isinstance(node, ast.BoolOp):
            vals = (ev(v, row) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand, row)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand, row)
        if isinstance(node, ast.Compare):
            left = ev(node.left, row)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp, row)
                if left is None or right is None:
                    if type(op) not in (ast.Eq, ast.NotEq):
                        return False
                if not _OPS[type(op)](left, right):  # check() admitted only these operators
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            if node.id not in row:
                raise HtxError(f"--where: unknown column {node.id!r}. Columns: {', '.join(columns())}")
            return row[node.id]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e, row) for e in node.elts]
        raise HtxError(f"--where: unsupported expression {ast.dump(node)[:60]}; use comparisons joined by and/or")

    return lambda row: bool(ev(tree, row))


def collect(store: Store, run: str | None = None, all_runs: bool = False, where: str | None = None, sort: str | None = None) -> list[dict[str, Any]]:
    """Leaderboard rows: the latest run by default, one run with ``run``, or every run."""
    if all_runs:
        run_ids = None
    else:
        run_id = run or store.latest_run_id()
        if run_id is None:
            raise HtxError(f"No results in {store.path}. Run `htx run CONFIG` first.")
        store.get_run(run_id)
        run_ids = [run_id]
    recs = store.trials(run_ids)
    targets: dict[str, tuple[float, float]] = {}
    rows = [_row(r, _targets(store, r.run_id, targets)) for r in recs]
    mark_pareto(rows)
    if where:
        keep = compile_where(where)
        rows = [r for r in rows if keep(r)]
    sort_rows(rows, sort)
    return rows


def misses(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that failed or ran but miss the targets (``unavailable`` rows did not run here, so they count as neither)."""
    return [r for r in rows if r["status"] != "unavailable" and not r["pass"]]


def sort_rows(rows: list[dict[str, Any]], sort: str | None) -> None:
    """Sort in place by ``KEY`` (ascending) or ``-KEY`` (descending); missing values last."""
    if not sort:
        rows.sort(key=lambda r: (r["fixture"], -_score_or(r, -math.inf), r["model_ms"] or math.inf))
        return
    desc = sort.startswith("-")
    key = sort.lstrip("-")
    if key not in columns() and key != "trial":
        raise HtxError(f"--sort: unknown column {key!r}. Columns: {', '.join(columns())} (prefix with - for descending)")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    present.sort(key=lambda r: r[key], reverse=desc)
    rows[:] = present + missing


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if key in ("max_abs_diff",):
            return f"{v:.3g}"
        if key == "fp16_op_fraction":
            return f"{v:.2f}"
        return f"{v:.2f}"
    return str(v)


def json_row(r: dict[str, Any]) -> dict[str, Any]:
    """One row for ``--format json``: every column, numbers as JSON numbers. A non-finite value (an SNR of
    ``-inf`` for a silent output, say) is ``null`` and named in ``"nonfinite": {column: "inf" | "-inf" | "nan"}``,
    which is present only on rows that have one; JSON has no infinity, and a string would break numeric readers."""
    out: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for k in columns():
        v = r.get(k)
        if isinstance(v, float) and not math.isfinite(v):
            flags[k] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
            v = None
        out[k] = v
    if flags:
        out["nonfinite"] = flags
    return out


def export(rows: list[dict[str, Any]], fmt: str) -> str:
    """Exact machine formats: ``csv``, ``json`` or ``md``."""
    if fmt == "json":
        return json.dumps([json_row(r) for r in rows], indent=2, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns())
        for r in rows:
            w.writerow(["" if r.get(k) is None else clean_float(r.get(k)) for k in columns()])
        return buf.getvalue()
    if fmt == "md":
        cols = [c for c in columns() if c != "run"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(c, r.get(c)).replace("|", "\\|") for c in cols) + " |")
        return "\n".join(lines) + "\n"
    raise HtxError(f"unknown format {fmt!r}: use table, csv, json or md")


def rich_table(rows: list[dict[str, Any]], title: str = "htx leaderboard") -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    cols = [
        *((a.name, a.title) for a in AXES),
        ("fixture", "fixture"), ("status", "status"), ("snr_db", "SNR dB"), ("max_abs_diff", "max |diff|"),
        ("sdr_delta_db", "ΔSDR dB"), ("fp16_op_fraction", "fp16 ops"), ("partitions", "parts"), ("evaluations", "evals"),
        ("model_ms", "model ms"), ("rtf", "RTF"),
    ]
    for key, header in cols:
        table.add_column(header, justify="right" if key in NUMERIC else "left", no_wrap=key in NUMERIC)
    table.add_column("", justify="left")
    any_emulated = any_parity = False
    for r in rows:
        cells = []
        for key, _ in cols:
            text = escape(_fmt(key, r.get(key)))
            if key == "status":
                color = {"ok": "green", "failed": "red", "unavailable": "yellow"}.get(r["status"], "white")
                text = f"[{color}]{text}[/{color}]"
            if key == "model_ms" and r.get("emulated") and text:
                text += " emu"
                any_emulated = True
            if key == "compute" and r.get("runtime"):
                text = f"{text} ({escape(r['runtime'])})"
            if key == "stft" and r.get("stft_parity_ok") is False:
                text += " [yellow]≠[/yellow]"
                any_parity = True
            cells.append(text)
        marks = ("✓" if r["pass"] else "✗") + (" ★" if r["pareto"] else "")
        table.add_row(*cells, marks)
    caption = "✓ meets targets  ✗ misses them  ★ Pareto-optimal (accuracy vs model latency, per fixture)"
    if any_emulated:
        caption += "\nemu: emulator time on this machine, not device latency"
    if any_parity:
        caption += "\n≠: this STFT's parity with the exact Demucs STFT is worse than targets.stft_rtol (column stft_parity)"
    table.caption = caption
    return table
