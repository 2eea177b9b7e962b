"""``htx report``: real plots from a real run, checked by their content, and the page in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_config
from htx.cli import app
from htx.config import parse_config
from htx.leaderboard import collect
from htx.plugins import load_registry
from htx.report import build_report
from htx.report_plots import module_group
from htx.run import Run
from htx.store import Store
from htx.summary import summarize

ROOT = Path(__file__).resolve().parents[1]

# all-FP16 is ~67 dB on this tiny model; the margin makes the first selection pass (2 evaluations: a quick fixture)
SEARCH = {"sensitivity": {"criterion": {"snr_db": 69}, "cost": "partitions", "minimize": False, "margin_db": 4}}


def _short_song(tmp: Path, name: str, seconds: float) -> Path:
    """The first ``seconds`` of a shipped song, with its true stems beside it (a path fixture): real music with
    stems at a quarter of the song's cost."""
    import soundfile as sf

    src = ROOT / "fixtures" / "music"
    for path in sorted(src.glob(f"{name}*.flac")):
        audio, rate = sf.read(path, frames=int(seconds * sf.info(path).samplerate), always_2d=True)
        sf.write(tmp / path.name.replace(name, "song"), audio, rate)
    return tmp / "song.flac"


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    reg = load_registry()
    song = _short_song(tmp, "music_a", 2.0)
    cfg = parse_config(make_config(
        tmp, fixtures=[{"sine_440": {"duration": 1.0}}, str(song)], precision=["fp32", "all-fp16", SEARCH],
    ), registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        rep = build_report(store, run_id, tmp / "rep")
        rows = collect(store, run=run_id)
        trials = store.trials([run_id])
    return {"tmp": tmp, "db": cfg.store.path, "run_id": run_id, "rep": rep, "rows": rows, "trials": trials}


def _pixels(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))[..., :3]
    return (img * 255).astype(np.uint8) if img.dtype != np.uint8 else img


def _colours(path: Path) -> set[tuple[int, int, int]]:
    px = _pixels(path).reshape(-1, 3).astype(np.int64) // 16  # quantized: antialiasing makes near-duplicates
    # one 12-bit code per pixel: a 1-D count (np.unique(axis=0) sorts rows, seconds on a page screenshot)
    present = np.flatnonzero(np.bincount(px[:, 0] << 8 | px[:, 1] << 4 | px[:, 2], minlength=4096))
    return {(int(c >> 8) * 16, int(c >> 4 & 15) * 16, int(c & 15) * 16) for c in present}


def _has_colour(path: Path, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(_pixels(path).astype(int) - rgb).max(axis=-1) <= tol).sum())


def test_the_plots_show_what_the_store_holds(report_run):
    r = report_run
    rep, trials = r["rep"], r["trials"]
    summary = summarize(r["rows"])
    assert set(rep.images) >= {"pareto.png", "precision-map.png", "search-1.png", "stems.png"}
    for name, path in rep.images.items():
        assert path.exists() and path.stat().st_size > 5000, name
        assert len(_colours(path)) >= 4, name  # a plot, not a blank canvas
    # one Pareto point per combination (3 policies), counted from the matplotlib artists
    assert rep.plotted["pareto.png"] == len(summary) == 3
    # no title, label or legend of any plot falls outside its figure (matplotlib's renderer measures them)
    assert rep.layout_problems == []
    html_text = rep.path.read_text()
    # the summary keeps the columns that differ; one surgery, one STFT, one unit are said once above it
    summary_html = html_text.split("<h2>Summary")[1].split("<h2>")[0]
    assert "In every row: surgery <code>full-hybrid</code>" in summary_html
    assert "<th>surgery</th>" not in summary_html and "<th>precision</th>" in summary_html
    assert "<th>#</th><th>combination</th>" in html_text  # the numbered points, listed under the plot
    # the map is the search answer's, one cell per compute op, and its FP32 ops are drawn red
    search = [t for t in trials if t.info.get("search")]
    chosen = next(t for t in trials if t.trial_id == rep.map_trial)
    assert chosen in search
    assert rep.plotted["precision-map.png"] == chosen.info["assignment"]["n_compute"]
    n32 = len(chosen.info["assignment"]["fp32_keys"])
    assert 0 < n32 < chosen.info["assignment"]["n_compute"]
    assert _has_colour(rep.images["precision-map.png"], "#d62728") > 0 and _has_colour(rep.images["precision-map.png"], "#9ecae1") > 0
    # the trace has one point per evaluation of the (single) search
    assert rep.plotted["search-1.png"] == search[0].info["search"]["evaluations"]
    assert _has_colour(rep.images["search-1.png"], "#2ca02c") > 0  # at least one passing evaluation, green
    # stems: one bar per (trial on the song, stem)
    on_song = [t for t in trials if t.fixture == "song" and t.status == "ok"]
    assert on_song
    assert rep.plotted["stems.png"] == len(on_song) * 4


def test_module_groups_follow_the_model_tree():
    assert module_group("encoder.2.dconv.layers.0") == "encoder.2"
    assert module_group("tdecoder.0.conv_tr") == "tdecoder.0"
    assert module_group("crosstransformer.layers_t.1.linear2") == "crosstransformer.layers_t.1"
    assert module_group("crosstransformer.channel_upsampler") == "crosstransformer"
    assert module_group("") == "(model forward)"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("Chromium is needed for the report's browser test: `apt-get install chromium` (.ci/run does it)")
    return exe


def _headless(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--hide-scrollbars", *args], capture_output=True, text=True, timeout=120)


def _browser_check(rep, run_id: str, tmp_path: Path, height: int) -> np.ndarray:
    """Render ``rep`` in headless Chromium: a screenshot that is not blank, every image decoded (read back from
    the live DOM), the page naming the run, nothing fetched from the network. Returns the screenshot's pixels."""
    exe = _chromium()
    page = rep.path
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", text)  # self-contained: nothing from the network
    shot = tmp_path / "shot.png"
    res = _headless(exe, f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), res.stderr[-2000:]
    px = _pixels(shot)
    assert px.shape[0] >= 1000 and px.std() > 20 and len(_colours(shot)) > 20  # not blank
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{document.body.setAttribute('data-probe',JSON.stringify("
              "{widths:[...document.images].map(i=>i.naturalWidth),title:document.title,"
              "h1:document.querySelector('h1').textContent}))});</script>")
    probe.write_text(text.replace("</body>", script + "</body>"))
    res = _headless(exe, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'data-probe="([^"]*)"', res.stdout)
    assert m, res.stderr[-2000:]
    seen = json.loads(html.unescape(m.group(1)))
    assert len(seen["widths"]) == len(rep.images) and all(w > 0 for w in seen["widths"]), seen["widths"]
    assert run_id in seen["title"] and run_id in seen["h1"]
    return px


def test_the_report_renders_in_headless_chromium(report_run, tmp_path):
    """The main job's shape (fixed policies beside a partition-cost sensitivity search, a song with stems): every
    figure in the browser, no label outside its figure (matplotlib's renderer checks each text's box)."""
    r = report_run
    _browser_check(r["rep"], r["run_id"], tmp_path, 2200)
    assert r["rep"].layout_problems == []
    assert set(r["rep"].images) >= {"pareto.png", "precision-map.png", "search-1.png", "stems.png"}


def test_a_40_combination_report_stays_readable_in_the_browser(tmp_path):
    """40 combinations (2 surgeries x 5 policies x 2 STFT backends x 2 compute units), as a plugin study makes:
    the Pareto plot numbers every point and lists it in a table, no label leaves its figure, the leaderboard
    labels stay distinct, and Chromium renders the page with every image."""
    reg = load_registry()
    policies = ["fp32", "all-fp16", "curated-fp32", {"modules": {"keep_fp32": ["", "decoder.*"]}},
                {"modules": {"keep_fp32": ["", "decoder.*", "tdecoder.*"]}}]
    cfg = parse_config(make_config(
        tmp_path, fixtures=[{"sine_440": {"duration": 0.5}}], surgery=["full-hybrid", "external-norm"],
        precision=policies, stft=["torch", "numpy"],
        compute=[{"torch": {"device": "cpu"}}, {"torch": {"device": "cpu", "low_dtype": "bf16"}}],
    ), registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = store.trials([run_id])
        assert len(trials) == 40 and all(t.status == "ok" for t in trials), [t.reason for t in trials if t.status != "ok"]
        rep = build_report(store, run_id, tmp_path / "rep")
    assert rep.layout_problems == []
    assert rep.plotted["pareto.png"] == 40  # one numbered point per combination
    page = rep.path.read_text()
    numbers = re.findall(r"<tr><td>(\d+)</td>", page)
    assert sorted({int(n) for n in numbers}) == list(range(1, 41))  # the table under the plot lists every number
    labels = re.findall(r"modules\[[^<]*", page)
    assert len({lab for lab in labels}) >= 2  # the two modules policies read differently
    _browser_check(rep, run_id, tmp_path, 4000)


def test_report_cli_and_its_errors(report_run, tmp_path):
    runner = CliRunner()
    db = str(report_run["db"])
    res = runner.invoke(app, ["report", report_run["run_id"], "--db", db, "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and (tmp_path / "r" / "report.html").exists()
    res = runner.invoke(app, ["report", "nope", "--db", db, "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "no run 'nope'" in res.output and "Traceback" not in res.output
    assert res.output.lstrip().startswith("Error: ") and "[red]" not in res.output  # styled, not literal markup
    res = runner.invoke(app, ["report", "latest", "--db", db, "--trial", "zzz", "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "no trial 'zzz'" in res.output
    res = runner.invoke(app, ["report", "--db", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 1 and "htx run CONFIG" in res.output
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = runner.invoke(app, ["report", "latest", "--db", db, "--out", str(a_file / "sub")])
    assert res.exit_code == 1 and "cannot create the report folder" in res.output
