"""The ``onnx`` compute unit on a small HTDemucs: real ONNX Runtime, real FP16 kernels, real exports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import hide_module, make_config, tiny_inner
from htx.api import Assignment, key_mismatches, load_registry, parse_config
from htx.cli import app
from htx.run import Run
from htx.session import Session
from htx.store import Store

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'htx[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'htx[onnx]'")

from htx_plugins.compute.onnxrt import OnnxUnit  # noqa: E402
from htx_plugins.compute.torch_unit import TorchUnit  # noqa: E402


def _snr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float(((ref - out) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref**2).sum()) / noise)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    inner, inputs = tiny_inner()
    unit = OnnxUnit()
    cache = tmp_path_factory.mktemp("onnx-cache")
    return unit, unit.prepare(inner, inputs, cache_dir=cache), inner, inputs, cache


def test_fp32_parity_and_real_fp16(prepared):
    unit, prep, inner, inputs, _ = prepared
    ref = [t.detach() for t in inner(*inputs)]
    out32 = unit.compile(prep, Assignment.all_fp32())(*inputs)
    assert all(_snr(r, a) >= 100 for r, a in zip(ref, out32)), [_snr(r, a) for r, a in zip(ref, out32)]
    a16 = Assignment.all_fp16(unit.ops(prep))
    out16 = unit.compile(prep, a16)(*inputs)
    snrs = [_snr(r, a) for r, a in zip(ref, out16)]
    assert all(torch.isfinite(a).all() for a in out16) and all(40 < s < 100 for s in snrs), snrs  # FP16 really ran
    assert all(a.dtype == torch.float32 for a in out16)  # inputs and outputs stay FP32


def test_assigned_nodes_are_fp16_in_the_session_graph(prepared):
    unit, prep, *_ = prepared
    compute = [op for op in unit.ops(prep) if op.compute and op.info["fp16_valid"]]
    chosen = {op.name for op in compute if op.type in ("conv", "matmul", "linear")}
    typed = unit.typed(prep, Assignment(frozenset(chosen))).model
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in
            [*onnx.shape_inference.infer_shapes(typed).graph.value_info, *typed.graph.input, *typed.graph.output]}
    elem.update({i.name: i.data_type for i in typed.graph.initializer})
    by_name = {n.name: n for n in typed.graph.node}
    for name in chosen:
        node = by_name[name]
        floats = [elem.get(v) for v in node.input if v and elem.get(v) in (1, 10)]
        assert floats and all(t == 10 for t in floats), (name, floats)  # every float input FP16
    others = [op.name for op in compute if op.name not in chosen][:50]
    assert all(all(elem.get(v) != 10 for v in by_name[n].input if v) for n in others)
    assert unit.placement(prep, Assignment(frozenset(chosen))).casts > 0
    # the session accepts it (ONNX Runtime type-checks every node)
    ort.InferenceSession(typed.SerializeToString(), providers=["CPUExecutionProvider"])


def test_keys_match_the_torch_unit(prepared):
    unit, prep, inner, inputs, _ = prepared
    tu = TorchUnit()
    check = key_mismatches(tu.ops(tu.prepare(inner, inputs)), unit.ops(prep), "onnx")
    assert check.ok and not check.unmapped and not check.undecided_reference, "\n".join(check.lines())
    assert check.exact > 100  # most keys are the same op on both units


def test_cache_is_reused_and_a_corrupt_entry_is_rebuilt(prepared):
    unit, prep, inner, inputs, cache = prepared
    again = unit.prepare(inner, inputs, cache_dir=cache)
    assert again.cached and again.path == prep.path
    prep.path.write_bytes(b"not an onnx model")
    rebuilt = unit.prepare(inner, inputs, cache_dir=cache)
    assert not rebuilt.cached and onnx.load(str(rebuilt.path)).graph.node
    assert [op.key for op in rebuilt.op_list] == [op.key for op in prep.op_list]


def test_a_run_a_search_and_the_exported_model(tmp_path):
    """A study on the unit (a static policy and sensitivity ranked through torch), then `htx export` of the
    search's trial as .onnx, run again by onnxruntime alone: its FP16 nodes are FP16 and it meets the bar."""
    reg = load_registry()
    crit = {"criterion": {"snr_db": 80}, "max_evaluations": 40, "minimize": False}  # all-FP16 reaches ~71 dB here
    cfg = parse_config(make_config(tmp_path, compute=["onnx"], precision=["all-fp16", "magnitude", {"sensitivity": crit}],
                                   fixtures=[{"white_noise": {"duration": 1.0}}]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        trials = store.trials([run.run_id])
    assert all(t.status == "ok" for t in trials), [(t.precision, t.reason) for t in trials]
    assert {t.runtime for t in trials} == {"onnxruntime:cpu"}
    found = [t for t in trials if t.precision.startswith("sensitivity")]
    search = found[0].info["search"]
    assert search["passed"] and search["rank_method"] == "first_order" and "torch" in search["rank_note"], search
    assert all(t.metrics["snr_db"] >= 80 for t in found) and search["evaluations"] <= 40 and search["fp32_ops"]
    out = tmp_path / "answer.onnx"
    res = CliRunner().invoke(app, ["export", f"{run.run_id}/{found[0].trial_id}", "--out", str(out), "--db", str(cfg.store.path)])
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out))
    fp16_nodes = sum(any(v.endswith("__h") for v in n.output) for n in model.graph.node if n.op_type != "Cast")
    assert fp16_nodes > 0 and "compute ops in FP16" in res.output, res.output
    # run it again with onnxruntime alone on the trial's own inputs: the same answer
    session = Session(cfg, reg)
    spec = session.spec(precision={"sensitivity": crit})
    prep = session.prepared(spec)
    pipe = session.builder.pipeline(prep, session.builder.stft(spec.stft, prep.surgery), None)
    session.load()  # the fixture's first segment through the real pipeline
    fx = session.workspace.fixtures[0].get()
    args, _ = pipe.model_inputs(session.builder.segmenting.first_batch(fx.mix))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    alone = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    via_unit = prep.compute.compile(prep.prepared, found_assignment(prep, search))(*args)
    for a, b in zip(alone, via_unit):
        assert np.array_equal(a, b.numpy())
    # the exported graph as "another tool's model" through htx's pipeline: the same worst-case SNR as the unit's
    def alone_forward(*xs):
        return tuple(torch.from_numpy(o) for o in sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)}))

    other = session.evaluate_forward(spec, alone_forward)
    own = session.evaluate(spec, found_assignment(prep, search))
    assert other.snr_db == pytest.approx(own.snr_db, abs=1e-6) and other.snr_db >= 80


def found_assignment(prep, search) -> Assignment:
    return Assignment.keep_fp32(prep.ops, search["fp32_ops"])


def test_unavailable_provider_and_missing_extra(tmp_path, monkeypatch):
    reg = load_registry()
    cfg = parse_config(make_config(tmp_path, compute=[{"onnx": {"providers": ["TensorrtExecutionProvider"]}}]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        (t,) = store.trials([run.run_id])
    assert t.status == "unavailable" and "TensorrtExecutionProvider is not in this onnxruntime" in t.reason
    hide_module(monkeypatch, "onnxruntime")
    ok, why = OnnxUnit().available()
    assert not ok and "pip install 'htx[onnx]'" in why


def test_an_export_failure_names_the_module(tmp_path):
    from htx.api import InnerModel, Surgery, build_registry, get_plugin_manager, module_plugin

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x.flatten(1)[:, :4].reshape(-1, 2, 2))[1].sum() + x  # no ONNX symbolic

    class Inner(InnerModel):
        def __init__(self, model):
            super().__init__()
            self.model, self.bad = model, Unexportable()

        def forward(self, spec_cac, mix):
            return self.bad(spec_cac)[:, None].repeat(1, 4, 1, 1, 1), mix[:, None].repeat(1, 4, 1, 1)

    class Svd(Surgery):
        """Not exportable.

        Example::

            surgery: [svd]
        """

        name = "svd"

        def build(self, model):
            return Inner(model)

    reg = build_registry(get_plugin_manager(extra_plugins=(module_plugin("svd_plugin", htx_register_surgeries=lambda register: register(Svd)),)))
    cfg = parse_config(make_config(tmp_path, surgery=["svd"], compute=["onnx"]), registry=reg)
    with Store(cfg.store.path) as store:
        run = Run(cfg, reg, store)
        run.execute()
        (t,) = store.trials([run.run_id])
    assert t.status == "failed" and "ONNX export failed in module 'bad'" in t.reason, t.reason


def test_check_unit_on_onnx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its default config caches in ./experiments/cache: not in the checkout
    res = CliRunner().invoke(app, ["check-unit", "onnx"])
    assert res.exit_code == 0, res.output
    assert "consistent under the transfer rule" in res.output and "no assignment can reach" not in res.output
