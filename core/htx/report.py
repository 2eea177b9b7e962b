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
from htx.report_plots import pareto_plot, precision_map, search_trace, stem_bars
from htx.results import stored_search, stored_steps
from htx.store import Store, TrialRecord
from htx.summary import axis_labels, summarize


@dataclass
class Report:
    path: Path
    images: dict[str, Path] = field(default_factory=dict)
    plotted: dict[str, int] = field(default_factory=dict)  # image -> points (or op cells) drawn
    map_trial: str | None = None
    notes: list[str] = field(default_factory=list)
    #: texts a plot let fall outside its figure (:func:`htx.report_plots.outside`); empty is the goal, tests check it
    layout_problems: list[str] = field(default_factory=list)


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
    # descriptive columns that hold one value in every row go above the table, so the table fits the page
    same = [(k, h) for k, h in cols[: len(axis_names()) + 3] if len(summary) > 1 and len({str(r.get(k)) for r in summary}) == 1]
    shown = [c for c in cols if c not in same]
    common = ("<p>In every row: " + "; ".join(f"{html.escape(h)} <code>{html.escape(str(summary[0].get(k)))}</code>"
                                             for k, h in same) + ".</p>") if same else ""
    sections.append("<h2>Summary (one row per combination)</h2>" + common + _table(summary, shown))

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
