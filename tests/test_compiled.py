"""The torch unit's ``compile: inductor`` mode on the CPU: trials run compiled (compile time reported apart, the
runtime says so), the numerics stay within FP16 noise of the eager per-op path, searches evaluate on the eager
path, and where inductor cannot run the unit says ``unavailable: ...``. The CUDA side is in tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

from conftest import make_config
from htx.config import parse_config
from htx.plugins import load_registry, module_plugin
from htx.run import Run
from htx.store import Store
from htx_plugins.compute.torch_unit import TorchUnit, inductor_available

#: One encoder/decoder level and no transformer: the smallest HTDemucs graph (inductor compiles it in ~25 s on
#: 2 cores, the tiny test model in ~55-75 s). The attention path is compiled in tests/test_gpu.py (CUDA).
SMALL_GRAPH = {"random": {"channels": 8, "depth": 1, "t_layers": 0, "segment": 1, "seed": 0}}


def test_a_compiled_trial_is_within_fp16_noise_of_the_eager_one(tmp_path):
    """Same assignment (all FP16), same fixture: the compiled row's SNR against FP32 is the eager row's or better
    (inductor keeps FP32 inside a fused kernel, rounding to FP16 only where a kernel writes), never more than
    3 dB worse; FP16 really ran (below 100 dB); compile time is reported apart from latency."""
    reg = load_registry()
    data = make_config(tmp_path, compute=[{"torch": {"device": "cpu"}}, {"torch": {"device": "cpu", "compile": "inductor"}}],
                       precision=["all-fp16"], latency={"warmup": 1, "repeats": 2}, model=SMALL_GRAPH)
    cfg = parse_config(data, registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = {t.runtime: t for t in store.trials([run_id])}
    assert set(trials) == {"torch:cpu", "torch:cpu:inductor"}
    eager, compiled = trials["torch:cpu"], trials["torch:cpu:inductor"]
    assert eager.status == compiled.status == "ok", (eager.reason, compiled.reason)
    assert compiled.metrics["compile_s"] > 0 and "compile_s" not in eager.metrics
    assert compiled.metrics["snr_db"] > eager.metrics["snr_db"] - 3, (compiled.metrics["snr_db"], eager.metrics["snr_db"])
    assert compiled.metrics["snr_db"] < 100 and compiled.metrics["model_ms"] > 0
    # the torch STFT runs inside the compiled graph: one model stage covers STFT, model and iSTFT
    assert compiled.metrics["segment_graph"] == 1 and "stft_ms" not in compiled.metrics
    assert "segment_graph" not in eager.metrics and eager.metrics["stft_ms"] > 0


class _Segment(TorchUnit):
    """The torch unit that takes the whole segment path like a compiled unit, but runs it eagerly (no compile:
    the wiring and the in-graph STFT's numerics, at eager cost)."""

    name = "segment-torch"
    wrapped: list[str] = []

    def compile_segment(self, prepared, assignment, wrap):
        type(self).wrapped.append(str(getattr(wrap, "key", None)))
        return wrap(self.search_forward(prepared, assignment))


def test_the_segment_path_takes_the_in_graph_stft_and_matches_the_staged_pipeline(tmp_path):
    """With the torch STFT the unit gets the whole segment (its in-graph STFT and overlap-add iSTFT); the numpy
    STFT offers no in-graph form, so its trial runs the stages around the model forward. Same assignment: the
    two rows agree to float rounding."""
    _Segment.wrapped = []
    plugin = module_plugin("segment", htx_register_compute_units=lambda register: register(_Segment))
    reg = load_registry(extra_plugins=(plugin,))
    data = make_config(tmp_path, compute=[{"segment-torch": {"device": "cpu"}}], stft=["torch", "numpy"],
                       fixtures=[{"white_noise": {"duration": 0.5}}], precision=["all-fp16"])
    cfg = parse_config(data, registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = {t.stft: t for t in store.trials([run_id])}
    assert _Segment.wrapped == ["torch"]
    fused, staged = trials["torch"], trials["numpy"]
    assert fused.status == staged.status == "ok", (fused.reason, staged.reason)
    assert fused.metrics["segment_graph"] == 1 and "stft_ms" not in fused.metrics
    assert "segment_graph" not in staged.metrics and staged.metrics["istft_ms"] > 0
    assert abs(fused.metrics["snr_db"] - staged.metrics["snr_db"]) < 0.5, (fused.metrics["snr_db"], staged.metrics["snr_db"])


class _Counting(TorchUnit):
    """The torch unit, counting which forward each caller asked for."""

    name = "counting-torch"
    calls: dict[str, int] = {"compile": 0, "search_forward": 0}

    def compile(self, prepared, assignment):
        type(self).calls["compile"] += 1
        return super().compile(prepared, assignment)

    def search_forward(self, prepared, assignment):
        type(self).calls["search_forward"] += 1
        return super().search_forward(prepared, assignment)


def test_a_search_evaluates_on_search_forward_and_its_trials_on_compile(tmp_path):
    _Counting.calls = {"compile": 0, "search_forward": 0}
    plugin = module_plugin("counting", htx_register_compute_units=lambda register: register(_Counting))
    reg = load_registry(extra_plugins=(plugin,))
    data = make_config(tmp_path, compute=[{"counting-torch": {"device": "cpu"}}],
                       fixtures=[{"sine_440": {"duration": 0.5}}, {"white_noise": {"duration": 0.5}}],
                       precision=[{"bisect": {"criterion": {"snr_db": 75}, "max_evaluations": 6}}])
    cfg = parse_config(data, registry=reg)
    with Store(cfg.store.path) as store:
        run_id = Run(cfg, reg, store).execute()
        trials = store.trials([run_id])
    assert [t.status for t in trials] == ["ok", "ok"], [t.reason for t in trials]
    evaluations = trials[0].metrics["evaluations"]
    assert evaluations > 1
    assert _Counting.calls["search_forward"] >= evaluations  # every evaluation on the fast-to-rebuild path
    assert _Counting.calls["compile"] == len(trials)  # the trials (one per fixture) run the deployable forward


def test_compiled_mode_says_unavailable_where_inductor_cannot_run(monkeypatch):
    assert TorchUnit(TorchUnit.Params(device="cpu", compile="inductor")).runtime == "torch:cpu:inductor"
    ok, why = inductor_available(torch.device("mps"))
    assert not ok and "cpu or cuda" in why and "compile: off" in why
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    unit = TorchUnit(TorchUnit.Params(device="cpu", compile="inductor"))
    ok, why = unit.available()
    assert not ok and "C++ compiler" in why and "compile: off" in why
    assert TorchUnit(TorchUnit.Params(device="cpu")).available() == (True, "")  # the eager path needs none


def test_a_bad_compile_value_is_a_config_error_with_the_choices(tmp_path):
    from htx.errors import ConfigError

    data = make_config(tmp_path, compute=[{"torch": {"device": "cpu", "compile": "inductr"}}])
    with pytest.raises(ConfigError, match="inductor"):
        parse_config(data, registry=load_registry())


def test_channels_last_rewrites_every_convolution_and_keeps_the_numerics():
    """The graph pass behind ``channels_last: true``: 2-D convolutions (plain and transposed, dilated, grouped)
    take channels-last operands, 1-D ones become 2-D of height 1; outputs equal the original graph's. A view of
    a convolution's (now channels-last) output, as group norm takes one, still works: it crashed on CUDA."""
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from htx_plugins.compute.torch_unit import channels_last_convolutions

    torch.manual_seed(0)
    c1, t1 = nn.Conv1d(4, 8, 3, stride=2, padding=1), nn.ConvTranspose1d(8, 4, 4, stride=2, output_padding=1)
    c2, t2 = nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.ConvTranspose2d(8, 4, (4, 1), stride=(2, 1))

    def f(x1, x2):
        y = c1(x1)
        y = y - y.view(2, 1, -1).mean(-1, keepdim=True)  # group norm's view of a conv output (1-D: channels-last)
        return t1(torch.relu(y)), t2(c2(x2))

    x1, x2 = torch.randn(2, 4, 37), torch.randn(2, 4, 16, 9)
    with torch.no_grad():
        gm = make_fx(f)(x1, x2)
        assert channels_last_convolutions(gm) == (2, 2)
        gm.recompile()
        got, want = gm(x1, x2), f(x1, x2)
    # the weights are constants laid out once by the pass: no call copies one into channels-last
    convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.convolution.default]
    for conv in convs:
        w = conv.args[1]
        assert w.op == "get_attr" and getattr(gm, w.target).is_contiguous(memory_format=torch.channels_last)
    assert not [n for n in gm.graph.nodes if n.target == torch.ops.aten.clone.default and n.args[0].op == "get_attr"]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_pad_channels_widens_thin_convolutions_and_keeps_the_numerics():
    """The graph pass behind ``pad_channels: true``: a convolution with 6 input or 6 output channels (1-D and
    2-D, with and without bias) convolves 8, the extra outputs sliced off; transposed and grouped ones are left
    alone; outputs equal the original graph's, with the channels-last pass after it too."""
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from htx_plugins.compute.torch_unit import channels_last_convolutions, pad_thin_convolutions

    torch.manual_seed(0)
    down, up = nn.Conv1d(48, 6, 3, padding=2, dilation=2), nn.Conv1d(6, 96, 1, bias=False)
    first = nn.Conv2d(4, 6, (8, 1), stride=(4, 1))
    kept = (nn.ConvTranspose1d(6, 6, 4, stride=2), nn.Conv1d(6, 6, 3, groups=2), nn.Conv1d(8, 16, 1))

    def f(x1, x2):
        y = up(torch.nn.functional.gelu(down(x1)))
        return y, first(x2), kept[0](y[:, :6]), kept[1](y[:, :6]), kept[2](y[:, :8])

    x1, x2 = torch.randn(2, 48, 37), torch.randn(1, 4, 64, 9)
    with torch.no_grad():
        want = f(x1, x2)
        for channels_last in (False, True):
            gm = make_fx(f)(x1, x2)
            assert pad_thin_convolutions(gm) == 3
            convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.convolution.default]
            weights = sorted(tuple(n.args[1].meta["val"].shape) for n in convs)
            assert weights == [(6, 3, 3), (6, 6, 4), (8, 8, 8, 1), (8, 48, 3), (16, 8, 1), (96, 8, 1)]
            if channels_last:
                assert channels_last_convolutions(gm) == (1, 5)
            gm.recompile()
            got = gm(x1, x2)
            for g, w in zip(got, want):
                assert g.shape == w.shape
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # graph options are unused off the compiled path, never refused there: a unit's params round-trip (the bench
    # rebuilds units from dumped params, eager ones included)
    for params in (TorchUnit.Params(device="cpu"), TorchUnit.Params(device="cpu", channels_last=True, pad_channels=True)):
        assert TorchUnit.Params(**params.model_dump()) == params
    assert TorchUnit.Params().channels_last == "auto"
