"""``htx bench executors``: one 24-trial CPU grid run with ``serial``, ``local`` and ``ray``, side by side.

The grid is the demo model's architecture (random weights: speed does not depend on them) x 3 precision
policies x 8 generated fixtures, torch on CPU. The FP32 references are computed once before anything is
timed (they are cached on disk and shared by the three runs, as in real use), and every run writes its own
fresh store. For each executor it reports the wall time of ``Run.execute`` (driver model load, worker
start-up, dispatch, trials, store writes), the speed-up over serial, the speed-up per core, and the
scheduling overhead per trial: ``(wall x worker slots - sum of trial durations) / trials``, i.e. how long
a slot was not running a trial (process start, model build, dispatch, the idle tail), per trial, and the
parallel efficiency ``sum of trial durations / (wall x slots)``. Serial runs torch with every core's
threads while each worker has one, so speed-up over serial and efficiency answer different questions:
what a user gains, and how much of the workers' time went to trials.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import typer
from rich.table import Table

from htx.config import parse_config
from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.models import DEMO_KWARGS
from htx.plugins import load_registry
from htx.records import write_record
from htx.run import Run
from htx.store import Store
from htx.workspace import Workspace

PRECISIONS = ["fp32", "all-fp16", "curated-fp32"]
#: Model architectures (random weights): the demo model's, and a tiny one for quick runs on small machines.
SIZES: dict[str, dict[str, Any]] = {
    "demo": {k: v for k, v in DEMO_KWARGS.items() if k != "sources"},
    "tiny": {"channels": 8, "depth": 4, "t_layers": 1, "segment": 1},
}


def bench_config(root: Path, duration: float, executor: Any, size: str = "demo") -> dict[str, Any]:
    """The benchmark grid: 3 precisions x 8 fixtures = 24 trials, torch on CPU."""
    fixtures: list[Any] = []
    for i in range(4):
        fixtures.append({"sine_440": {"duration": duration, "frequency": 110.0 * (i + 1)}})
        fixtures.append({"white_noise": {"duration": duration, "seed": i}})
    return {
        "name": "bench-executors",
        "model": {"random": {**SIZES[size], "seed": 0}},
        "fixtures": fixtures,
        "precision": PRECISIONS,
        "compute": [{"torch": {"device": "cpu"}}],
        "latency": {"warmup": 1, "repeats": 3},
        "executor": executor,
        "store": {
            "path": str(root / f"{executor if isinstance(executor, str) else next(iter(executor))}.sqlite"),
            "cache_dir": str(root / "cache"),
            "artifacts_dir": str(root / "runs"),
        },
    }


def _timed_run(data: dict[str, Any], registry: Any, say: Any) -> dict[str, Any]:
    cfg = parse_config(data, "bench", registry)
    with Store(cfg.store.path) as store:
        run = Run(cfg, registry, store, on_message=say)
        t0 = time.perf_counter()
        run_id = run.execute()
        wall = time.perf_counter() - t0
        trials = store.trials([run_id])
    report = run.executor_report if run.executor_report is not None and run.executor_report.kind != "serial" else None
    return {
        "wall_s": wall,
        "trials": len(trials),
        "ok": sum(t.status == "ok" for t in trials),
        "trial_s_sum": sum(t.duration_s or 0.0 for t in trials),
        "trial_s_median": statistics.median(t.duration_s or 0.0 for t in trials),
        "snr": {t.trial_id: t.metrics.get("snr_db") for t in trials},
        "first_start_s": report.first_start_s if report else None,
        "worker_processes": len(report.workers) if report else 1,
        "references_computed_by_workers": report.references_computed if report else None,
    }


@handle_errors
def command(
    workers: int = typer.Option(None, "--workers", min=1, help="local workers and Ray CPUs (default: every core)"),
    duration: float = typer.Option(4.0, "--duration", min=0.5, help="seconds of audio per fixture"),
    size: str = typer.Option("demo", "--size", help="model architecture: demo (the demo model's) or tiny"),
    skip_ray: bool = typer.Option(False, "--no-ray", help="leave Ray out (e.g. when it is not installed)"),
    one_thread: bool = typer.Option(True, "--one-thread/--no-one-thread",
                                    help="also time serial with 1 torch thread (the per-core baseline)"),
    json_out: Path = typer.Option(None, "--json", help="also write the numbers to this JSON file"),
    workdir: Path = typer.Option(None, "--workdir", help="where stores and caches go (default: a temporary folder)"),
) -> None:
    """Wall time of a 24-trial CPU grid with serial, local and ray on this machine, and the speed-ups."""
    if size not in SIZES:
        raise HtxError(f"--size {size!r}: use one of {', '.join(SIZES)}")
    cores = os.cpu_count() or 1
    slots = workers or cores
    e = err()

    def say(msg: str) -> None:
        e.print(f"  {msg}", highlight=False, markup=False)

    registry = load_registry()
    root = Path(workdir or tempfile.mkdtemp(prefix="htx-bench-executors-"))
    root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    e.print(f"htx bench executors: 24 trials, {size} model, {duration:g} s fixtures, {cores} cores, {slots} workers; in {root}", highlight=False)

    e.print("FP32 references (computed once, shared by every run; not timed) ...")
    warm = parse_config(bench_config(root, size=size, duration=duration, executor="serial"), "bench", registry)
    Workspace(warm, registry, say).load()

    results: dict[str, dict[str, Any]] = {}

    def save() -> None:  # after every run, so a run cut short still leaves what it measured
        if json_out is not None:
            record = {
                "benchmark": "executors", "size": size, "host": platform.node(), "cores": cores, "workers": slots,
                "duration_s": duration, "torch": torch.__version__, "torch_threads_serial": torch.get_num_threads(),
                "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "load_average_before": load_before, "load_average_after": os.getloadavg(),
                "results": {k: {kk: vv for kk, vv in v.items() if kk != "snr"} for k, v in results.items()},
            }
            write_record(json_out, record)

    e.print(f"serial (torch threads: {torch.get_num_threads()}) ...")
    results["serial"] = _timed_run(bench_config(root, size=size, duration=duration, executor="serial"), registry, say)
    save()
    if one_thread:
        threads = torch.get_num_threads()
        e.print("serial with 1 torch thread (each worker's share) ...")
        torch.set_num_threads(1)
        try:
            results["serial-1-thread"] = _timed_run(bench_config(root, size=size, duration=duration, executor="serial"), registry, say)
        finally:
            torch.set_num_threads(threads)
        save()
    e.print("local ...")
    results["local"] = _timed_run(bench_config(root, size=size, duration=duration, executor={"local": {"workers": slots}}), registry, say)
    save()
    ray_start = None
    if not skip_ray:
        import ray

        e.print("ray: starting a local cluster (timed separately) ...")
        t0 = time.perf_counter()
        ray.init(num_cpus=slots, include_dashboard=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - t0
        try:
            results["ray"] = _timed_run(bench_config(root, size=size, duration=duration, executor={"ray": {"address": "auto"}}), registry, say)
        finally:
            ray.shutdown()
        results["ray"]["cluster_start_s"] = ray_start

    base = results["serial"]["wall_s"]
    snr0 = results["serial"]["snr"]
    table = Table(title=f"htx bench executors: 24-trial CPU grid on {platform.node()} ({cores} cores)")
    base1 = results.get("serial-1-thread", {}).get("wall_s")
    for col in ("executor", "workers", "wall s", "speed-up", "per core", "vs 1 thread", "Σ trial s", "efficiency",
                "overhead/trial s", "1st trial s", "ok", "max |ΔSNR| dB (<100)"):
        table.add_column(col, justify="left" if col == "executor" else "right")
    for kind, r in results.items():
        n = 1 if kind.startswith("serial") else slots
        r["slots"] = n
        r["speedup"] = base / r["wall_s"]
        r["speedup_per_core"] = r["speedup"] / cores
        r["speedup_vs_one_thread"] = base1 / r["wall_s"] if base1 else None
        r["overhead_per_trial_s"] = (r["wall_s"] * n - r["trial_s_sum"]) / r["trials"]
        r["efficiency"] = r["trial_s_sum"] / (r["wall_s"] * n)
        # Trials near float32 round-off (fp32: SNR ~140 dB) differ by several dB with the thread count: skip them.
        diffs = [abs(v - snr0[k]) for k, v in r["snr"].items() if v is not None and snr0.get(k) is not None and snr0[k] < 100]
        r["max_snr_diff_db"] = max(diffs, default=0.0)
        table.add_row(
            kind, str(n), f"{r['wall_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['speedup_per_core']:.2f}",
            "" if base1 is None else f"{r['speedup_vs_one_thread']:.2f}x",
            f"{r['trial_s_sum']:.1f}", f"{r['efficiency']:.2f}", f"{r['overhead_per_trial_s']:.2f}",
            "" if r["first_start_s"] is None else f"{r['first_start_s']:.1f}", f"{r['ok']}/{r['trials']}",
            f"{r['max_snr_diff_db']:.2g}",
        )
    o = out()
    o.print(table)
    notes = [
        f"speed-up = serial wall / executor wall; per core = speed-up / {cores} (target on a 16-core machine: >= 0.7).",
        f"ideal for 24 equal trials on {slots} workers: {24 / -(-24 // slots):.1f}x (they run in {-(-24 // slots)} waves).",
        "vs 1 thread = serial-1-thread wall / executor wall: the speed-up from running trials side by side alone, "
        "without torch's intra-op threads (which serial also uses).",
        "overhead/trial = (wall x workers - sum of trial durations) / 24: start-up, model build, dispatch, idle tail.",
    ]
    if ray_start is not None:
        rr = results["ray"]
        notes.append(f"ray cluster start: {ray_start:.1f} s (not in its wall); with it: {base / (rr['wall_s'] + ray_start):.2f}x.")
    notes.append("efficiency = sum of trial durations / (wall x workers): the share of worker time spent in trials.")
    notes.append(f"serial runs torch with {torch.get_num_threads()} threads, each worker with 1; torch sums in a "
                 "thread-count-dependent order, so SNRs differ at round-off level; ΔSNR is over trials below 100 dB.")
    notes.append("load average (1, 5, 15 min) before: {:.1f} {:.1f} {:.1f}, after: {:.1f} {:.1f} {:.1f} "
                 "(other work on the machine skews every number).".format(*load_before, *os.getloadavg()))
    for line in notes:
        o.print(line, highlight=False)
    save()
    if json_out is not None:
        e.print(f"wrote {json_out}", highlight=False)
