"""The ``coreai`` unit on a small HTDemucs: a typed torch.export program, converted by coreai-torch to a real
``.aimodel`` and read back through the Core AI runtime's asset API (which works on Linux; running needs macOS 27)."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_config, tiny_inner
from htx.api import Assignment, key_mismatches, load_registry, parse_config
from htx.cli import app
from htx.run import Run
from htx.store import Store

pytest.importorskip("coreai_torch", reason="Core AI needs Python >= 3.11 and pip install 'htx[coreai]'")

from htx_plugins.compute.coreai import CoreAIUnit  # noqa: E402
from htx_plugins.compute.coreai.program import summary  # noqa: E402
from htx_plugins.compute.torch_unit import TorchUnit  # noqa: E402


@pytest.fixture(scope="module")
def prepared():
    inner, inputs = tiny_inner()
    unit = CoreAIUnit()
    return unit, unit.prepare(inner, inputs), inner, inputs


def _snr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float(((ref - out) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref**2).sum()) / noise)


def test_keys_match_the_torch_unit(prepared):
    unit, prep, inner, inputs = prepared
    tu = TorchUnit()
    check = key_mismatches(tu.ops(tu.prepare(inner, inputs)), unit.ops(prep), "coreai")
    assert check.ok and not check.unmapped and not check.undecided_reference, "\n".join(check.lines())


def test_the_typed_program_runs_fp16_where_assigned(prepared):
    unit, prep, inner, inputs = prepared
    ref = [t.detach() for t in inner(*inputs)]
    out32 = unit.compile(prep, Assignment.all_fp32())(*inputs)
    assert all(_snr(r, a) > 200 for r, a in zip(ref, out32))
    a16 = Assignment.all_fp16(unit.ops(prep))
    out16 = unit.compile(prep, a16)(*inputs)
    assert all(40 < _snr(r, a) < 100 for r, a in zip(ref, out16))  # FP16 really ran
    assert unit.placement(prep, a16).casts > 0 and unit.placement(prep, Assignment.all_fp32()).casts == 0


def test_export_round_trip_and_op_distribution(prepared, tmp_path):
    unit, prep, *_ = prepared
    convs = [op.name for op in unit.ops(prep) if op.type == "conv"]
    fp32 = unit.export(prep, Assignment.all_fp32(), tmp_path / "fp32.aimodel")
    s32 = summary(fp32)
    assert "Float32" in s32["compute_types"] and "Float16" not in s32["compute_types"]
    half = Assignment(frozenset(convs))  # only the convolutions in FP16
    path = unit.export(prep, half, tmp_path / "convs.aimodel")
    s16 = summary(path)
    assert "Float16" in s16["compute_types"] and "Float32" in s16["compute_types"]
    assert s16["operation_distribution"]["conv2d"] == s32["operation_distribution"]["conv2d"] == len(convs)
    # each converted conv reads FP16 values: the program gained casts, one in and one out per conv at least
    gained = s16["operation_distribution"].get("cast", 0) - s32["operation_distribution"].get("cast", 0)
    assert gained >= len(convs), (gained, len(convs))
    assert prep.export_report["casts"] >= 2 * len(convs)


def test_htx_export_of_a_torch_trial_as_aimodel(tmp_path):
    reg = load_registry()
    cfg = parse_config(make_config(tmp_path, precision=["curated-fp32"]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        (t,) = store.trials([run.run_id])
    out = tmp_path / "answer.aimodel"
    res = CliRunner().invoke(app, ["export", f"{run.run_id}/{t.trial_id}", "--out", str(out), "--db", cfg.store.path])
    assert res.exit_code == 0, res.output
    assert "exporting through the coreai unit" in res.output and "portable keys" in res.output
    assert "Float16" in summary(out)["compute_types"]


def test_unavailable_without_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_coreai(name, *args, **kwargs):
        if name == "coreai_torch":
            raise ImportError("No module named 'coreai_torch'", name="coreai_torch")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_coreai)
    ok, why = CoreAIUnit().available()
    assert not ok and why.startswith("Core AI needs Python >= 3.11 and pip install 'htx[coreai]'")
