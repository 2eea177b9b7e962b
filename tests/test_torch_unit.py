"""The torch compute unit: op naming, precision semantics, lazy casts, group-norm kernel choice."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import tiny_inner
from htx.api import Assignment
from htx_plugins.compute.torch_unit import TorchUnit
from htx_plugins.precision.static import CuratedFP32


@pytest.fixture(scope="module")
def setup():
    return tiny_inner(batch=1)


def _unit(**kw):
    return TorchUnit(TorchUnit.Params(device="cpu", **kw))


def test_op_names_stable_and_typed(setup):
    inner, inputs = setup
    unit = _unit()
    a, b = unit.ops(unit.prepare(inner, inputs)), unit.ops(unit.prepare(inner, inputs))
    assert [(o.name, o.type) for o in a] == [(o.name, o.type) for o in b]
    types = {o.type for o in a}
    assert {"conv", "conv_transpose", "linear", "scaled_dot_product_attention", "layer_norm", "reduce_mean"} <= types
    assert not any(t.startswith("aten.") for t in types), types  # every op maps to the vocabulary
    assert {o.name for o in a if not o.compute} and all(o.type in ("reshape", "transpose", "expand_dims", "squeeze", "slice_by_index", "concat", "pad", "gather", "tile", "identity", "broadcast_to") for o in a if not o.compute)


def test_lazy_casts_bit_identical_to_per_op(setup):
    inner, inputs = setup
    lazy, per_op = _unit(), _unit(casts="per-op")
    p_lazy, p_per = lazy.prepare(inner, inputs), per_op.prepare(inner, inputs)
    ops = lazy.ops(p_lazy)
    rng = random.Random(0)
    compute = [o.name for o in ops if o.compute]
    assignments = [
        Assignment.all_fp16(ops),
        CuratedFP32().select(ops),
    ]
    # Random mixes: FP32 ops fed by FP16 ones (expanded views among them) and attention whose query and
    # key/value projections differ in precision.
    assignments += [Assignment(frozenset(rng.sample(compute, len(compute) // 2))) for _ in range(5)]
    fp32 = per_op.compile(p_per, Assignment.all_fp32())(*inputs)
    for asg in assignments:
        a = lazy.compile(p_lazy, asg)(*inputs)
        b = per_op.compile(p_per, asg)(*inputs)
        for x, y, ref in zip(a, b, fp32):
            assert x.dtype == torch.float32
            if torch.equal(x, y):  # what most CPUs give: the same kernels see the same values
                continue
            # Lazy keeps an FP16 result FP16 (an expanded view of it too) where per-op made an FP32 copy;
            # some CPUs pick another vectorised kernel for such an input and sum in another order, which
            # can flip the FP16 rounding of a rare element. Same semantics, so the gap must be far below
            # the FP16 error itself: 30 dB (a wrong cast, a missed op, is of the FP16 error's own size).
            gap = float(((x - y).double() ** 2).sum())
            fp16_err = float(((y - ref).double() ** 2).sum())
            assert gap <= 1e-3 * fp16_err, (asg, gap, fp16_err)


def test_fp16_changes_output_and_fp32_is_exact(setup):
    inner, inputs = setup
    unit = _unit()
    prepared = unit.prepare(inner, inputs)
    ref = inner(*inputs)
    fp32 = unit.compile(prepared, Assignment.all_fp32())(*inputs)
    fp16 = unit.compile(prepared, Assignment.all_fp16(unit.ops(prepared)))(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(ref, fp32))
    err = (fp16[1] - ref[1]).abs().max()
    assert 0 < err < 1e-2


def test_group_norm_by_reductions_matches_native(setup):
    inner, inputs = setup
    native, reduced = _unit(group_norm="native"), _unit(group_norm="reduce")
    pn, pr = native.prepare(inner, inputs), reduced.prepare(inner, inputs)
    a = native.compile(pn, Assignment.all_fp32())(*inputs)
    b = reduced.compile(pr, Assignment.all_fp32())(*inputs)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_group_norm_by_reductions_reads_any_layout():
    """One group or several, 1-D or 2-D, contiguous or channels-last input: native group norm's numbers, and a
    channels-last input is normalized in place (no copy to contiguous: the output keeps its layout)."""
    from htx_plugins.compute.torch_unit import _group_norm_by_reductions

    torch.manual_seed(0)
    for shape, group in (((3, 8, 37), 1), ((3, 8, 36), 1), ((3, 8, 37), 4), ((2, 6, 5, 7), 3), ((2, 6, 5, 30), 1),
                         ((2, 4, 16, 67), 1),  # 67 frames (prime, > 64): chunked along the 16 bins instead
                         ((2, 48, 67), 1), ((2, 48, 67), 2)):  # no spatial chunks: the group's 48 or 24 channels
        x = torch.randn(*shape) * 3 + 5  # a mean far from 0: the chunked variance must still be exact
        w, b = torch.randn(shape[1]), torch.randn(shape[1])
        want = torch.nn.functional.group_norm(x, group, w, b, 1e-5)
        cl = x.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2) if x.ndim == 3 \
            else x.contiguous(memory_format=torch.channels_last)
        for inp in (x, cl):
            for chunks in (1, 64):  # group_norm: reduce, chunked (36 and 30 split into 36 and 30 chunks)
                y, mean, rstd = _group_norm_by_reductions(inp, w, b, shape[0], shape[1], 0, group, 1e-5, chunks)
                torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
                assert mean.shape == rstd.shape == (shape[0], group) and y.stride() == inp.stride()


def test_record_reports_per_op_stats(setup):
    inner, inputs = setup
    unit = _unit()
    prepared = unit.prepare(inner, inputs)
    stats = unit.record(prepared, Assignment.all_fp32(), inputs)
    names = {o.name for o in unit.ops(prepared)}
    assert set(stats) == names
    assert all(s.finite for s in stats.values())
    assert max(s.max_abs for s in stats.values()) > 0
    assert any(s.reduction_size > 1 for s in stats.values())


def test_fp32_means_fp32_on_cuda_unless_tf32_is_asked_for():
    """On CUDA the unit turns cuDNN's and cuBLAS's TF32 off around its forward (on unless `tf32: true`) and
    restores the user's switches after; elsewhere it leaves them alone."""
    import torch

    from htx_plugins.compute.torch_unit import TorchParams, tf32_allowed

    assert TorchParams().tf32 is False
    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    saved = flags()
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with tf32_allowed(torch.device("cuda"), False):
            assert flags() == (False, False)
        assert flags() == (True, True)
        with tf32_allowed(torch.device("cuda"), True):
            assert flags() == (True, True)
        with tf32_allowed(torch.device("cpu"), False):
            assert flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
