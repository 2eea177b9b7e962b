"""Benchmark records tied to the code and machine that measured them.

Every JSON record under ``experiments/benchmarks/`` carries ``provenance``: the git commit of the measured code
(``-dirty`` when the working tree had uncommitted changes), the device, and the versions of the packages
whose code was measured. ``write_record`` is the one way a benchmark writes its record.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

#: What a record's ``provenance`` must hold (a test checks every committed record).
REQUIRED = ("commit", "device", "versions")
#: Distributions whose code a benchmark measures.
PACKAGES = ("torch", "numpy", "demucs", "coremltools", "onnx", "onnxruntime", "coreai-torch")


def git_commit(cwd: Path | None = None) -> str:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it; ``unknown (...)`` outside a checkout.

    ``HTX_COMMIT``, when set, names it instead: a copied tree (a GPU machine's copy of the working tree) may
    carry no ``.git``, or a stale one that is not the commit being measured."""
    if os.environ.get("HTX_COMMIT"):
        return os.environ["HTX_COMMIT"] + " (HTX_COMMIT)"
    where = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return f"unknown (not a git checkout: {head.stderr.strip() or head.returncode})"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def device_name() -> str:
    """The accelerator that ran the benchmark, else the CPU (model and core count)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken torch install still gets a record
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def package_versions(dists: tuple[str, ...]) -> dict[str, str]:
    """Installed versions by distribution name, from package metadata ("not installed" where absent)."""
    out = {}
    for dist in dists:
        try:  # metadata, not an import: importing coremltools on Linux prints warnings
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), **package_versions(PACKAGES)}
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
    except Exception:
        pass
    return out


def provenance() -> dict[str, Any]:
    return {"commit": git_commit(), "device": device_name(), "versions": versions(),
            "host": platform.node(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a benchmark record as JSON with its ``provenance`` (commit, device, versions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "provenance": provenance()}, indent=1, default=str))
    return path


def missing_provenance(record: dict[str, Any]) -> list[str]:
    """The required provenance fields a record lacks (empty when it is complete)."""
    prov = record.get("provenance")
    if not isinstance(prov, dict):
        return list(REQUIRED)
    return [k for k in REQUIRED if not prov.get(k)]
