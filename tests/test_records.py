"""Benchmark records are tied to the code and machine that measured them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from htx.records import REQUIRED, missing_provenance, write_record

ROOT = Path(__file__).resolve().parents[1]


def test_every_committed_record_names_its_commit_device_and_versions():
    records = sorted((ROOT / "experiments" / "benchmarks").glob("*.json"))
    assert records
    lacking = {p.name: missing_provenance(json.loads(p.read_text())) for p in records}
    assert not {k: v for k, v in lacking.items() if v}, lacking
    for p in records:
        prov = json.loads(p.read_text())["provenance"]
        commit = prov["commit"].split()[0].split("-")[0]
        assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), (p.name, prov["commit"])
        assert isinstance(prov["versions"], dict) and prov["versions"].get("torch"), p.name


def test_write_record_stamps_the_checkout_commit_device_and_versions(tmp_path):
    path = write_record(tmp_path / "sub" / "r.json", {"benchmark": "x", "rows": [1]})
    rec = json.loads(path.read_text())
    assert rec["benchmark"] == "x" and not missing_provenance(rec)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert rec["provenance"]["commit"].split("-")[0] == head
    assert set(REQUIRED) <= set(rec["provenance"]) and rec["provenance"]["versions"]["torch"]


def test_a_record_without_provenance_is_named():
    assert missing_provenance({"rows": []}) == list(REQUIRED)
    assert missing_provenance({"provenance": {"commit": "abc", "device": "", "versions": {"torch": "2"}}}) == ["device"]
