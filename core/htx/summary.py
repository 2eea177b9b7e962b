"""The default leaderboard view: one row per combination, summarised over its fixtures, in short labels.

A combination is one entry per axis (and its runtime). Its row shows the worst SNR over the fixtures, whether
every fixture passes, the mean ΔSDR and FP16 share, the most partitions, the mean model time and the
search's evaluations. Labels are the plugin name, plus only the options that tell two entries of one axis
apart; an emulated runtime says ``(emu)``. Exports (``--format csv|json|md``) stay per fixture, exact and
complete; ``htx leaderboard --by fixture`` shows that view as a table.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from htx.axes import AXES, axis_names

_OPTION = re.compile(r"^(?P<name>[^\[]+)(?:\[(?P<opts>.*)\])?$")


def _split(key: str) -> tuple[str, dict[str, str]]:
    m = _OPTION.match(key)
    if not m:
        return key, {}
    opts: dict[str, str] = {}
    for part in re.split(r",(?=[A-Za-z_]+=)", m.group("opts") or ""):
        if "=" in part:
            k, v = part.split("=", 1)
            opts[k] = v.strip("'\"")
    return m.group("name"), opts


def short_labels(keys: list[str]) -> dict[str, str]:
    """``{entry key: short label}``: the name, plus the options whose values differ among same-named keys."""
    parsed = {k: _split(k) for k in keys}
    out = {}
    for k, (name, opts) in parsed.items():
        same = [o for n, o in parsed.values() if n == name]
        differing = sorted({o_k for o in same for o_k in o} if len(same) > 1 else set())
        differing = [d for d in differing if len({o.get(d) for o in same}) > 1]
        shown = [f"{d}={opts[d]}" for d in differing if d in opts]  # an option left at its default is not shown
        out[k] = name + (f"[{','.join(shown)}]" if shown else "")
    return out


#: The widest an axis label is shown in the leaderboard table.
LABEL_WIDTH = 34


def fit_labels(labels: list[str], width: int = LABEL_WIDTH) -> dict[str, str]:
    """Each label cut to ``width`` characters keeping the part that tells it apart: a label longer than ``width``
    keeps its name and the option items (``, ``-separated) it does not share with every label of that name, with
    ``…`` for the shared ones (``modules[…'decoder.*', 'tdecoder.*']]``); labels that would still look the same
    keep their ends instead."""
    out: dict[str, str] = {}
    for label in labels:
        if len(label) <= width or "[" not in label:
            out[label] = label if len(label) <= width else label[: width - 1] + "…"
            continue
        name, inner = label.split("[", 1)
        inner = inner[:-1] if inner.endswith("]") else inner
        peers = [o.split("[", 1)[1].rstrip("]").split(", ") for o in labels if o != label and o.startswith(name + "[")]
        tokens = inner.split(", ")
        shared = set(tokens).intersection(*map(set, peers)) if peers else set()
        kept = [t for t in tokens if t not in shared] or tokens
        shown = f"{name}[{'…' if len(kept) < len(tokens) else ''}{', '.join(kept)}]"
        out[label] = shown if len(shown) <= width else shown[: width - 2] + "…]"
    shown_values = list(out.values())
    for label, shown in list(out.items()):
        if shown_values.count(shown) > 1:  # never show two labels the same: their ends differ
            out[label] = "…" + label[-(width - 1):]
    return out


def axis_labels(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{axis: {entry key: short label}}`` over ``rows``, options shown only where entries differ."""
    return {a: short_labels(sorted({r[a] for r in rows})) for a in axis_names()}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, axis entries, runtime), in the order the combinations first appear."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["run"], *(r[a] for a in axis_names()), r["runtime"]), []).append(r)
    out: list[dict[str, Any]] = []
    for members in groups.values():
        first = members[0]
        ok = [m for m in members if m["status"] == "ok"]
        snrs = [m["snr_db"] for m in ok if m["snr_db"] is not None]

        def mean(key: str, ms: list[dict[str, Any]] = ok) -> float | None:
            vals = [m[key] for m in ms if m.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        statuses = {m["status"] for m in members}
        status = "failed" if "failed" in statuses else ("ok" if statuses == {"ok"} else "/".join(sorted(statuses)))
        out.append({
            **{k: first[k] for k in ("run", *axis_names(), "runtime", "emulated", "stft_emulated")},
            "fixtures": len(members), "status": status,
            "snr_db": min(snrs) if snrs else None,
            "pass": all(m["pass"] for m in members if m["status"] != "unavailable") and bool(ok),
            "sdr_delta_db": mean("sdr_delta_db"), "fp16_op_fraction": mean("fp16_op_fraction"),
            "partitions": max((m["partitions"] for m in ok if m.get("partitions") is not None), default=None),
            "model_ms": mean("model_ms"),
            "evaluations": max((m["evaluations"] for m in members if m.get("evaluations") is not None), default=None),
            "stft_parity_ok": all(m.get("stft_parity_ok") is not False for m in members),
            "reason": next((m["reason"] for m in members if m["reason"]), ""),
        })
    out.sort(key=lambda r: (r["snr_db"] is None, -(r["snr_db"] or 0.0)))
    return out


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def summary_table(rows: list[dict[str, Any]], title: str = "htx leaderboard") -> Table:
    """The summary rows as a rich table that fits 120 columns for the main job."""
    summary = summarize(rows)
    labels = axis_labels(summary)
    shown_axes = [a for a in AXES if len({r[a.name] for r in summary}) > 1 or a.name == "precision"]
    all_emu = bool(summary) and all(r.get("emulated") for r in summary)  # then said once, in the header
    table = Table(title=title, show_lines=False, pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    fitted = {a.name: fit_labels(list(labels[a.name].values())) for a in shown_axes}
    for a in shown_axes:
        table.add_column(a.title, no_wrap=True, overflow="ellipsis", max_width=LABEL_WIDTH + 6)
    for header in ("min SNR", "pass", "ΔSDR", "fp16", "parts", "ms (emu)" if all_emu else "model ms", "evals"):
        table.add_column(header, justify="right" if header != "pass" else "center", no_wrap=True)
    any_emu = any_parity = False
    for r in summary:
        cells = []
        for a in shown_axes:
            text = escape(fitted[a.name][labels[a.name][r[a.name]]])
            if a.name == "compute" and r.get("emulated") and not all_emu:
                text += " (emu)"
            if a.name == "stft" and not r["stft_parity_ok"]:
                text += " ≠"
                any_parity = True
            cells.append(text)
        status = {"ok": "", "failed": " [red]failed[/red]"}.get(r["status"], f" [yellow]{r['status']}[/yellow]")
        mark = ("[green]✓[/green]" if r["pass"] else "[red]✗[/red]") + status
        ms = _num(r["model_ms"], ".1f") + (" emu" if r.get("emulated") and not all_emu and r["model_ms"] is not None else "")
        any_emu = any_emu or bool(r.get("emulated"))
        cells += [_num(r["snr_db"], ".1f"), mark, _num(r["sdr_delta_db"], ".3f"), _num(r["fp16_op_fraction"], ".2f"),
                  _num(r["partitions"], "d"), ms, _num(r["evaluations"], "d")]
        table.add_row(*cells)
    fixed = []
    for a in AXES:
        if a not in shown_axes and labels[a.name]:
            text = next(iter(labels[a.name].values()))
            if a.name == "compute" and summary and summary[0].get("emulated"):
                text += f" ({summary[0]['runtime']})"
            fixed.append(f"{a.name}: {text}")
    caption = (f"one row per combination over {max((r['fixtures'] for r in summary), default=0)} fixtures: min SNR (dB) is the worst;\n"
               "✓ when every fixture meets the targets; `htx leaderboard --by fixture` shows each fixture")
    if fixed:
        caption += "\n" + "; ".join(fixed)
    if all_emu:
        caption += "\nevery row is emulated here: ms (emu) is the emulator's model time per segment, not device latency"
    elif any_emu:
        caption += "\n(emu): emulated here; emu ms: emulator time, not device latency"
    if any_parity:
        caption += "\n≠: STFT parity worse than targets.stft_rtol"
    table.caption = caption
    return table
