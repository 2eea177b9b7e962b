"""``htx report``: one run as a self-contained HTML page with PNG plots (matplotlib, Agg).

Contents: a Pareto plot (worst SNR over fixtures against model latency, per compute unit, the target drawn,
emulated latency marked), a per-op precision map of one trial over the model's module tree (encoders,
cross-transformer layers, decoders, time branch; FP32 ops and partition boundaries marked), a search trace
per search, per-stem SDR / ΔSDR bars for fixtures with true stems, and the run's config, model,
environment and failure reasons. The PNGs are written beside ``report.html`` and embedded in it as data
URIs, so the page needs no network and can be mailed as one file.

:func:`build_report` returns what each plot drew (``plotted``: points or cells per image, counted from the
matplotlib artists), which the tests compare against the store.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htx import __version__
from htx.axes import axis_names
from htx.errors import HtxError
from htx.leaderboard import collect
from htx.records import package_versions
from htx.results import stored_search, stored_steps
from htx.store import Store, TrialRecord
from htx.summary import axis_labels, summarize

FP16_COLOUR, FP32_COLOUR = "#9ecae1", "#d62728"
PASS_COLOUR, FAIL_COLOUR = "#2ca02c", "#d62728"
UNIT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Report:
    path: Path
    images: dict[str, Path] = field(default_factory=dict)
    plotted: dict[str, int] = field(default_factory=dict)  # image -> points (or op cells) drawn
    map_trial: str | None = None
    notes: list[str] = field(default_factory=list)
    #: texts a plot let fall outside its figure (:func:`outside`); empty is the goal, and the tests check it
    layout_problems: list[str] = field(default_factory=list)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _combo_label(row: dict[str, Any], labels: dict[str, dict[str, str]], varying: list[str]) -> str:
    return " / ".join(labels[a][row[a]] for a in varying) or labels["precision"][row["precision"]]


def outside(fig: Any) -> list[str]:
    """Texts (labels, titles, legends) whose box leaves the figure, measured by matplotlib's own renderer."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    found = []
    # tick labels are laid out by matplotlib itself (and ticks beyond the view exist but are never drawn)
    ticks = {id(t) for ax in fig.axes for t in [*ax.get_xticklabels(which="both"), *ax.get_yticklabels(which="both")]}
    for artist in fig.findobj(lambda a: hasattr(a, "get_window_extent") and type(a).__name__ in ("Text", "Annotation", "Legend")):
        if id(artist) in ticks or not artist.get_visible() or (type(artist).__name__ in ("Text", "Annotation") and not artist.get_text()):
            continue
        try:
            ext = artist.get_window_extent(renderer)
        except Exception:
            continue
        if ext.width and (ext.x0 < box.x0 - 1 or ext.y0 < box.y0 - 1 or ext.x1 > box.x1 + 1 or ext.y1 > box.y1 + 1):
            found.append(artist.get_text() if hasattr(artist, "get_text") else type(artist).__name__)
    return found


def pareto_plot(summary: list[dict[str, Any]], target: float, path: Path, labels: dict[str, dict[str, str]],
                problems: list[str] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Worst SNR against model ms per combination, one colour per compute unit, each point numbered (the
    numbers are listed under the plot, so labels never overlap however many combinations there are), the
    quality/latency front as a step line, a log latency axis when latencies span more than 10x. Returns the
    points drawn and the numbered list."""
    plt = _plt()
    varying = [a for a in ("precision", "stft", "surgery") if len({r[a] for r in summary}) > 1]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    drawn = 0
    numbered: list[dict[str, Any]] = []
    units = list(dict.fromkeys((r["compute"], r["runtime"]) for r in summary))
    any_emulated = False
    # Exact rows (inf dB: the same STFT as the reference, all FP32) and very clean ones are drawn at a cap, as
    # triangles, so the interesting region near the target keeps its resolution.
    cap = target + 30.0
    plotted: list[tuple[float, float]] = []
    for i, (compute, runtime) in enumerate(units):
        pts = [r for r in summary if (r["compute"], r["runtime"]) == (compute, runtime)
               and r["snr_db"] is not None and r["model_ms"] is not None and not math.isnan(r["snr_db"])]
        if not pts:
            continue
        emulated = bool(pts[0].get("emulated"))
        any_emulated |= emulated
        colour = UNIT_COLOURS[i % len(UNIT_COLOURS)]
        name = f"{labels['compute'][compute]} ({runtime})" + (" — latency emulated" if emulated else "")
        style = {"s": 70, "facecolors": "none" if emulated else colour, "edgecolors": colour, "linewidths": 2}
        low = [r for r in pts if r["snr_db"] <= cap]
        high = [r for r in pts if r["snr_db"] > cap]
        if low:
            drawn += len(ax.scatter([r["model_ms"] for r in low], [max(r["snr_db"], target - 40) for r in low], label=name, **style).get_offsets())
        if high:
            drawn += len(ax.scatter([r["model_ms"] for r in high], [cap] * len(high), marker="^", label=None if low else name, **style).get_offsets())
        for r in pts:
            y = min(max(r["snr_db"], target - 40), cap)
            n = len(numbered) + 1
            ax.annotate(str(n), (r["model_ms"], y), fontsize=7, xytext=(4, 4), textcoords="offset points", color="#222222")
            numbered.append({"n": n, "combination": _combo_label(r, labels, varying) or labels["precision"].get(r["precision"], r["precision"]),
                             "unit": name, "snr_db": r["snr_db"], "model_ms": r["model_ms"], "pass": r.get("pass")})
            plotted.append((r["model_ms"], y))
    front = _front(plotted)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#555555", linewidth=1, alpha=0.7,
                label="front: no point is both faster and better")
    ax.axhline(target, color="#333333", linestyle="--", linewidth=1, label=f"target {target:g} dB")
    times = [p[0] for p in plotted if p[0] > 0]
    if times and max(times) / min(times) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("model ms per segment" + (" (hollow markers: emulator time, not device latency)" if any_emulated else "")
                  + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"worst SNR over fixtures (dB; triangles: above {cap:g})")
    ax.set_title("Quality vs latency (numbered points: see the table below)", pad=12)
    ax.margins(x=0.06, y=0.1)  # room for the numbers of the outermost points inside the axes
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    if problems is not None:
        problems += [f"pareto: {t!r} outside the figure" for t in outside(fig)]
    fig.savefig(path)
    plt.close(fig)
    return drawn, numbered


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and SNR (higher), by latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def module_group(module: str) -> str:
    """The row of the precision map an op's module belongs to: ``encoder.2``, ``crosstransformer.layers.1``, ..."""
    parts = module.split(".") if module else []
    if not parts:
        return "(model forward)"
    if parts[0] in ("encoder", "decoder", "tencoder", "tdecoder") and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "crosstransformer":
        for i, p in enumerate(parts[:-1]):
            if p.startswith("layers"):
                return ".".join(parts[: i + 2])
    return parts[0]


def precision_map(ops: list[dict[str, Any]], fp32_keys: set[str], title: str, path: Path,
                  problems: list[str] | None = None) -> tuple[int, int]:
    """One row per module group (execution order), one cell per compute op, red = FP32; a black bar marks
    the first op of each partition (a precision segment in execution order). Returns (cells, partitions)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    compute = [o for o in ops if o["compute"]]
    is32 = [o["key"] in fp32_keys for o in compute]
    starts = {i for i in range(len(compute)) if i == 0 or is32[i] != is32[i - 1]}
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(compute):
        groups.setdefault(module_group(o["module"]), []).append(i)
    width = max((len(v) for v in groups.values()), default=1)
    fig_h = 1.2 + 0.28 * (len(groups) + 2)
    fig, ax = plt.subplots(figsize=(12, fig_h), dpi=110)
    cells = 0
    rows = [("execution order (all ops)", list(range(len(compute))))] + list(groups.items())
    top = len(rows) - 1
    # the all-ops row: a band with each FP32 run as one red block (at least one cell wide, so a lone FP32 op
    # stays visible) and each partition start as a tick above the band, not hundreds of slivers
    scale = width / max(1, len(compute))
    ax.add_patch(Rectangle((0, top + 0.3), width, 0.4, color=FP16_COLOUR, linewidth=0))
    run_start = None
    for i in range(len(compute) + 1):
        if i < len(compute) and is32[i] and run_start is None:
            run_start = i
        elif (i == len(compute) or not is32[i]) and run_start is not None:
            ax.add_patch(Rectangle((run_start * scale, top + 0.3), max((i - run_start) * scale, 0.6), 0.4, color=FP32_COLOUR, linewidth=0))
            run_start = None
    for i in sorted(starts - {0}):
        ax.plot([i * scale, i * scale], [top + 0.72, top + 0.98], color="black", linewidth=1)
    ax.text(-0.5, top + 0.5, rows[0][0], ha="right", va="center", fontsize=7)
    for r, (name, idx) in enumerate(rows[1:], start=1):
        y = len(rows) - 1 - r
        for j, i in enumerate(idx):
            ax.add_patch(Rectangle((j, y + 0.1), 0.92, 0.8, color=FP32_COLOUR if is32[i] else FP16_COLOUR, linewidth=0))
            cells += 1
            if i in starts and i > 0:
                ax.plot([j, j], [y + 0.02, y + 0.98], color="black", linewidth=1.2)
        ax.text(-0.5, y + 0.5, name, ha="right", va="center", fontsize=7)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Rectangle((0, 0), 1, 1, color=FP16_COLOUR, label="FP16"), Rectangle((0, 0), 1, 1, color=FP32_COLOUR, label="FP32"),
                       Line2D([0], [0], color="black", linewidth=1.2, label="partition start")],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(0, len(rows))
    ax.set_yticks([])
    ax.set_xlabel("op index within the module group (execution order)")
    n32 = sum(is32)
    ax.set_title(f"{title}\n{n32} of {len(compute)} compute ops FP32 (red), {len(starts)} partitions (black bars)", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.subplots_adjust(left=0.2, right=0.9, top=1 - 0.9 / fig_h, bottom=0.55 / fig_h)
    if problems is not None:
        problems += [f"precision map: {t!r} outside the figure" for t in outside(fig)]
    fig.savefig(path)
    plt.close(fig)
    return cells, len(starts)


def search_trace(log: list[dict[str, Any]], title: str, target: float | None, path: Path, answer_fp32: int | None = None,
                 problems: list[str] | None = None) -> int:
    """Evaluation index against FP32 set size (top, log scale) and worst SNR (bottom, with the criterion's bar);
    green passed, red failed; the evaluation that verified the answer (``answer_fp32`` FP32 ops) is starred."""
    import textwrap

    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5.4), dpi=110, sharex=True)
    xs = list(range(1, len(log) + 1))
    colours = [PASS_COLOUR if e.get("passed") else FAIL_COLOUR for e in log]
    sc = a1.scatter(xs, [e.get("n_fp32", 0) for e in log], c=colours, s=18)
    a1.set_yscale("symlog", linthresh=10)  # one all-FP32 probe must not flatten the sets that matter
    a1.set_ylabel("FP32 ops (log)")
    snr = [(x, e["snr_db"], c) for x, e, c in zip(xs, log, colours) if isinstance(e.get("snr_db"), (int, float)) and math.isfinite(e["snr_db"])]
    a2.scatter([s[0] for s in snr], [s[1] for s in snr], c=[s[2] for s in snr], s=18)
    if target is not None:
        a2.axhline(target, color="#333333", linestyle="--", linewidth=1, label=f"criterion: {target:g} dB")
    final = [x for x, e in zip(xs, log) if e.get("passed") and answer_fp32 is not None and e.get("n_fp32") == answer_fp32]
    if final:
        x = final[-1]
        e = log[x - 1]
        a1.scatter([x], [e["n_fp32"]], marker="*", s=160, facecolors="none", edgecolors="black", linewidths=1.2, label="the answer")
        if isinstance(e.get("snr_db"), (int, float)) and math.isfinite(e["snr_db"]):
            a2.scatter([x], [e["snr_db"]], marker="*", s=160, facecolors="none", edgecolors="black", linewidths=1.2)
        a1.legend(fontsize=7, loc="upper right")
    if target is not None:
        a2.legend(fontsize=7, loc="lower right")
    a2.set_ylabel("worst SNR (dB)")
    a2.set_xlabel("evaluation (green: passed, red: failed)")
    from matplotlib.ticker import MaxNLocator

    a2.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    if problems is not None:
        problems += [f"search trace: {t!r} outside the figure" for t in outside(fig)]
    fig.savefig(path)
    plt.close(fig)
    return len(sc.get_offsets())


def stem_bars(trials: list[TrialRecord], labels: dict[str, str], path: Path) -> int:
    """Per-stem SDR and ΔSDR (vs the FP32 reference) per combination on one fixture with true stems."""
    plt = _plt()
    stems = sorted({k.split(".", 1)[1] for t in trials for k in t.metrics if k.startswith("sdr_db.")})
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    n = len(trials)
    w = 0.8 / max(1, n)
    bars = 0
    for i, t in enumerate(trials):
        colour = UNIT_COLOURS[i % len(UNIT_COLOURS)]
        xs = [s + (i - (n - 1) / 2) * w for s in range(len(stems))]
        sdr = [t.metrics.get(f"sdr_db.{s}") or 0.0 for s in stems]
        delta = [t.metrics.get(f"sdr_delta_db.{s}") or 0.0 for s in stems]
        bars += len(a1.bar(xs, sdr, w, color=colour, label=labels[t.trial_id]))
        a2.bar(xs, delta, w, color=colour)
    for a, name in ((a1, "SDR (dB)"), (a2, "ΔSDR vs FP32 reference (dB)")):
        a.set_xticks(range(len(stems)), stems)
        a.set_ylabel(name)
        a.grid(alpha=0.3, axis="y")
    a1.legend(fontsize=7)
    fig.suptitle(f"per-stem separation quality on {trials[0].fixture}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return bars


def choose_map_trial(trials: list[TrialRecord], rows: dict[str, dict[str, Any]]) -> TrialRecord | None:
    """Default for the map: the cheapest passing search answer (partitions, then FP32 ops); failing that, any
    search trial; failing that, the trial with the most FP32 ops that is not all-FP32."""
    have = [t for t in trials if t.info.get("ops_file") and t.info.get("assignment")]
    search = [t for t in have if t.info.get("search")]

    def cost(t: TrialRecord) -> tuple[float, int]:
        parts = t.metrics.get("partitions")
        return (parts if parts is not None else math.inf, len(t.info["assignment"].get("fp32_keys", [])))

    passing = [t for t in search if rows.get(t.trial_id, {}).get("pass")]
    for pool in (passing, search):
        if pool:
            return min(pool, key=cost)
    mixed = [t for t in have if 0 < len(t.info["assignment"]["fp32_keys"]) < t.info["assignment"]["n_compute"]]
    return max(mixed, key=lambda t: len(t.info["assignment"]["fp32_keys"])) if mixed else None


def _environment(run: dict[str, Any]) -> dict[str, str]:
    env = {"htx (run)": str(run.get("htx_version")), "host (run)": str(run.get("host")), "htx (report)": __version__,
           "python": platform.python_version(), "platform": platform.platform()}
    env.update(package_versions(("torch", "coremltools", "numpy", "demucs", "matplotlib")))
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    except Exception:
        env["device"] = platform.machine()
    return env


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)} ({path.name})</figcaption></figure>'


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.2f}" if math.isfinite(v) else str(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em}
.note{color:#666;font-size:.9em}.fail{color:#b00}"""


def build_report(store: Store, run_id: str, out_dir: Path, trial_id: str | None = None) -> Report:
    """Write ``out_dir/report.html`` and its PNGs for ``run_id``; see the module docstring."""
    run = store.get_run(run_id)
    trials = store.trials([run_id])
    if not trials:
        raise HtxError(f"run {run_id} has no stored trials yet: nothing to report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HtxError(f"cannot create the report folder {out_dir}: {exc.strerror or exc}") from None
    cfg = json.loads(run["config_json"])
    target = float((cfg.get("targets") or {}).get("snr_db", 60.0))
    rows = collect(store, run=run_id)
    by_trial = {r["trial"]: r for r in rows}
    summary = summarize(rows)
    rep = Report(out_dir / "report.html")
    sections: list[str] = []

    # Pareto -----------------------------------------------------------------------------------------
    labels = axis_labels(summary)
    p = out_dir / "pareto.png"
    rep.plotted["pareto.png"], numbered = pareto_plot(summary, target, p, labels, rep.layout_problems)
    rep.images["pareto.png"] = p
    emulated = any(r.get("emulated") for r in summary)
    sections.append("<h2>Quality vs latency</h2>" + _img(p, "Pareto plot: worst SNR over fixtures against model latency per compute unit")
                    + ('<p class="note">Hollow markers: latency measured on an emulator (emulated), not on the device.</p>' if emulated else "")
                    + _table(numbered, [("n", "#"), ("combination", "combination"), ("unit", "compute unit"),
                                        ("snr_db", "worst SNR dB"), ("model_ms", "model ms"), ("pass", "pass")]))
    cols = [(a, a) for a in axis_names()] + [("runtime", "runtime"), ("fixtures", "fixtures"), ("status", "status"),
            ("snr_db", "worst SNR dB"), ("pass", "pass"), ("sdr_delta_db", "mean ΔSDR dB"), ("fp16_op_fraction", "FP16 share"),
            ("partitions", "partitions"), ("model_ms", "model ms" + (" (emulated rows: emulator time)" if emulated else "")),
            ("evaluations", "evaluations")]
    sections.append("<h2>Summary (one row per combination)</h2>" + _table(summary, cols))

    # precision map ----------------------------------------------------------------------------------
    chosen = next((t for t in trials if t.trial_id == trial_id), None) if trial_id else choose_map_trial(trials, by_trial)
    if trial_id and chosen is None:
        raise HtxError(f"no trial {trial_id!r} in run {run_id}; `htx show {run_id}` lists them")
    if chosen is not None and chosen.info.get("ops_file") and Path(chosen.info["ops_file"]).exists():
        ops = json.loads(Path(chosen.info["ops_file"]).read_text())["ops"]
        fp32 = set(chosen.info["assignment"].get("fp32_keys", []))
        title = f"{chosen.precision} on {chosen.compute} ({chosen.surgery}), trial {chosen.trial_id}"
        p = out_dir / "precision-map.png"
        cells, parts = precision_map(ops, fp32, title, p, rep.layout_problems)
        rep.plotted["precision-map.png"] = cells
        rep.images["precision-map.png"] = p
        rep.map_trial = chosen.trial_id
        passing_search = bool(chosen.info.get("search")) and bool(by_trial.get(chosen.trial_id, {}).get("pass"))
        what = ("" if trial_id or passing_search else
                '<p class="note">No search of this run passed its targets' + (
                    f"; drawn: the search trial {html.escape(chosen.trial_id)}, which did not pass" if chosen.info.get("search")
                    else f"; no search ran; drawn: the trial with the most FP32 ops that is not all-FP32 ({html.escape(chosen.precision)})")
                + ".</p>")
        sections.append(f"<h2>Where the FP32 ops sit: {html.escape(chosen.precision)}</h2>" + what
                        + _img(p, f"Per-op precision map of trial {chosen.trial_id}: {len(fp32)} FP32 ops, {parts} partitions")
                        + f'<p class="note">Trial {html.escape(chosen.trial_id)}; choose another with <code>htx report {html.escape(run_id)} --trial ID</code>.</p>')
    else:
        rep.notes.append("no trial with a stored op list and assignment: no precision map")
        sections.append('<h2>Where the FP32 ops sit</h2><p class="note">No trial of this run stores its op list (runs before htx 0.1 with issue 17).</p>')

    # search traces ----------------------------------------------------------------------------------
    seen: set[str] = set()
    traces: list[str] = []
    for t in trials:
        search = stored_search(t.info.get("search"))
        if search is None or not search.log_path or search.log_path in seen or not Path(search.log_path).exists():
            continue
        seen.add(search.log_path)
        try:
            data = json.loads(Path(search.log_path).read_text())
        except (OSError, ValueError) as exc:
            rep.notes.append(f"search log {search.log_path} unreadable: {exc}")
            continue
        log = stored_steps(data.get("log") if isinstance(data, dict) else None)
        if not log:
            continue
        bar = search.criterion.bar_db(target) if search.criterion is not None else None
        name = f"search-{len(traces) + 1}.png"
        p = out_dir / name
        evals = "?" if search.evaluations is None else search.evaluations
        n32 = "?" if search.n_fp32 is None else search.n_fp32
        title = f"{t.precision} on {t.compute}: {evals} evaluations, {n32} FP32 ops; {search.status}"
        rep.plotted[name] = search_trace(log, title, bar if bar is not None else target, p, search.n_fp32, rep.layout_problems)
        rep.images[name] = p
        traces.append(_img(p, f"Search trace: {t.precision} on {t.compute}"))
    if traces:
        sections.append("<h2>Search traces</h2>" + "".join(traces))

    # stems ------------------------------------------------------------------------------------------
    with_stems = [t for t in trials if t.status == "ok" and any(k.startswith("sdr_db.") for k in t.metrics)]
    if with_stems:
        fixture = with_stems[0].fixture
        chosen_stems = [t for t in with_stems if t.fixture == fixture]
        tl = {t.trial_id: " / ".join(labels[a].get(getattr(t, a), getattr(t, a)) for a in ("precision", "stft", "compute")
                                     if len({getattr(x, a) for x in chosen_stems}) > 1) or t.precision for t in chosen_stems}
        p = out_dir / "stems.png"
        rep.plotted["stems.png"] = stem_bars(chosen_stems, tl, p)
        rep.images["stems.png"] = p
        sections.append("<h2>Per-stem separation quality</h2>" + _img(p, f"Per-stem SDR and ΔSDR on {fixture}"))

    # run facts --------------------------------------------------------------------------------------
    failures = [r for r in rows if r["status"] not in ("ok",)]
    fail_html = ("<ul>" + "".join(f'<li class="fail">{html.escape(r["status"])}: {html.escape(r["trial"])} '
                                  f'{html.escape(" x ".join(str(r[a]) for a in (*axis_names(), "fixture")))}: {html.escape(r["reason"] or "")}</li>'
                                  for r in failures) + "</ul>") if failures else "<p>none</p>"
    env = _environment(run)
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))
    sections.append(f"<h2>Failures and unavailable trials ({len(failures)})</h2>" + fail_html)
    sections.append(f"<h2>Model</h2><p>{html.escape(str(run['model_source']))} (hash {html.escape(str(run['model_hash']))})</p>")
    sections.append("<h2>Environment</h2>" + _table([{"k": k, "v": v} for k, v in env.items()], [("k", "what"), ("v", "version")])
                    + '<p class="note">"(run)" rows are what the run recorded; the rest is the environment that wrote this report.</p>')
    sections.append("<h2>Config</h2><pre>" + html.escape(json.dumps(cfg, indent=2)) + "</pre>")
    title = f"htx report: run {run_id} ({run['name']})"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>status {html.escape(run['status'])}, created {created}, {len(trials)} trials, config "
            f"{html.escape(str(run['config_path'] or '(stored)'))}. Target: worst SNR >= {target:g} dB."
            + (" Rows from emulated units say so; their latency is emulator time." if emulated else "")
            + "</p>" + "".join(sections) + "</body></html>")
    rep.path.write_text(page, encoding="utf-8")
    return rep
