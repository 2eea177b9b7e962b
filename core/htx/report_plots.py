"""The report's plots (matplotlib, Agg): Pareto, precision map, search trace, per-stem SDR, and the layout check.

Every plot function draws one PNG and returns what it drew (for the tests); :func:`outside` measures, with
matplotlib's own renderer, that no title, label or legend leaves its figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from htx.store import TrialRecord

FP16_COLOUR, FP32_COLOUR = "#9ecae1", "#d62728"
PASS_COLOUR, FAIL_COLOUR = "#2ca02c", "#d62728"
UNIT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


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
            numbered.append({"n": n, "combination": _combo_label(r, labels, varying) or labels["precision"].get(r["precision"], r["precision"]),
                             "unit": name, "snr_db": r["snr_db"], "model_ms": r["model_ms"], "pass": r.get("pass")})
            plotted.append((r["model_ms"], y))
    times = [p[0] for p in plotted if p[0] > 0]
    if times and max(times) / min(times) > 10:
        ax.set_xscale("log")  # before numbering: the clusters are found on screen
        ticker = _ticker()
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        # minor ticks labelled at 2x and 5x only: 80, 90 and 100 would run into each other
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _pos: f"{v:g}" if v > 0 and f"{v / 10 ** math.floor(math.log10(v)):.0f}" in ("2", "5") else ""))
    ax.margins(x=0.06, y=0.1)  # room for the numbers of the outermost points inside the axes
    ax.autoscale_view()
    numbers = _number_points(ax, plotted)
    front = _front(plotted)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#555555", linewidth=1, alpha=0.7,
                label="front: no point is both faster and better")
    ax.axhline(target, color="#333333", linestyle="--", linewidth=1, label=f"target {target:g} dB")
    ax.set_xlabel("model ms per segment" + (" (hollow markers: emulator time, not device latency)" if any_emulated else "")
                  + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"worst SNR over fixtures (dB; triangles: above {cap:g})")
    ax.set_title("Quality vs latency (numbered points: see the table below)", pad=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    _declutter(fig, numbers)
    if problems is not None:
        problems += [f"pareto: {t!r} outside the figure" for t in outside(fig)]
        problems += [f"pareto: labels {a!r} and {b!r} overlap" for a, b in overlapping(fig, numbers)]
    fig.savefig(path)
    plt.close(fig)
    return drawn, numbered


def _ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker


def overlapping(fig: Any, texts: list[Any]) -> list[tuple[str, str]]:
    """Pairs of ``texts`` whose boxes overlap on the rendered figure (matplotlib's renderer)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[:i] if ba.overlaps(bb)]


def _declutter(fig: Any, texts: list[Any], step_px: float = 6.0, tries: int = 40) -> None:
    """Nudge point labels apart: each label (top to bottom) that overlaps one already placed moves down, then up,
    in small steps until it sits clear; measured with matplotlib's renderer, so long labels are handled too."""
    if not texts:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points_per_px = 72.0 / fig.dpi
    placed: list[Any] = []
    for text in sorted(texts, key=lambda t: -t.get_window_extent(renderer).y0):
        x0, y0 = text.xyann
        for k in range(tries + 1):
            shift = (k + 1) // 2 * step_px * (-1 if k % 2 else 1) if k else 0.0
            text.xyann = (x0, y0 + shift * points_per_px)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(p) for p in placed):
                break
        placed.append(text.get_window_extent(renderer))


def _number_points(ax: Any, points: list[tuple[float, float]], near_x: float = 28.0, near_y: float = 12.0) -> list[Any]:
    """Number the points 1..n; points that sit within a label's size of each other on screen (chained: single
    linkage) share one label ("7,8,9,10"), so numbers never sit on each other however tightly points cluster."""
    screen = ax.transData.transform(points) if points else []
    parent = list(range(len(points)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(points)):
        for j in range(i):
            if abs(screen[i][0] - screen[j][0]) < near_x and abs(screen[i][1] - screen[j][1]) < near_y:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(points)):
        groups.setdefault(root(i), []).append(i)
    texts = []
    for members in groups.values():
        left = min(members, key=lambda i: screen[i][0])
        top = max(screen[i][1] for i in members)
        x, _ = points[left]
        y = ax.transData.inverted().transform((screen[left][0], top))[1]
        texts.append(ax.annotate(",".join(str(i + 1) for i in sorted(members)), (x, y), fontsize=7, xytext=(4, 6),
                                 textcoords="offset points", color="#222222"))
    return texts


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
