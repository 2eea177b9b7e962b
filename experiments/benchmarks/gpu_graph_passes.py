"""Graph passes of the compiled segment graph, timed side by side (the records ``gpu_h100_graph_passes.json``).

Full-size HTDemucs (random init, seed 0), a 60 s generated song, every segment in one batch, ``compile: inductor``
on the ``torch`` STFT backend, all-FP16. Per variant (a set of ``TorchUnit`` options): median wall time of
``separate`` over 7 runs, compile time, SNR against the first variant's output, and the torch profiler's GPU time
by kernel category. With ``expert``, the expert pipeline of the GPU-latency issue (batched segments, whole model,
``torch.compile``, autocast fp16) is timed in the same process, and every variant gets its ratio to it. On a CUDA
machine::

    python experiments/benchmarks/gpu_graph_passes.py [full|small] [variant,...|all] [expert] > log

The JSON goes to $OUT or /tmp. ``max-autotune`` tunes each convolution and matmul shape for several seconds:
point TORCHINDUCTOR_CACHE_DIR at a folder that outlives the process (an ignored, uncarried folder of the
checkout on the device machine), and a second run on the same machine reuses the picks of a run cut short.
The first record run also measured a pass that computed thin 1x1 convolutions as fused multiply-adds
(``pointwise_1x1``); it was slower and dropped: ``git show 9a4eac5:plugins/htx_plugins/compute/torch_unit.py``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any

import torch

import htx_plugins.compute.torch_unit as torch_unit
import htx_plugins.stft.torch_stft as torch_stft
from htx.api import Assignment, random_htdemucs
from htx.separation import separate
from htx.spectrogram import demucs_ispec, hop_length, ispec_padded, istft_fold, spec_to_cac
from htx_plugins.compute.gpu_bench import (
    SIZES,
    _pipeline,
    expert_forward,
    kernel_profile,
    padded_to_batch,
    test_clip,
    timed,
)
from htx_plugins.compute.torch_unit import TorchUnit, channels_last_convolutions
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.surgery.full_hybrid import FullHybrid

T0 = time.time()


def say(*parts: Any) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *parts, flush=True)


#: variant -> TorchUnit options on top of ``compile: inductor``
NO_PASSES = {"pad_channels": False, "cudnn_benchmark": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": NO_PASSES,  # the unit's defaults (on CUDA: channels-last, chunked group norm since df64d55)
    "reduce group norm": {"group_norm": "reduce"},  # unchunked: what chunked group norm is measured against
    "channels-last": {**NO_PASSES, "channels_last": True},
    "cudnn-benchmark": {**NO_PASSES, "cudnn_benchmark": True},
    "pad-channels": {**NO_PASSES, "pad_channels": True},
    "pad + benchmark": {},
    "pad + benchmark + channels-last": {"channels_last": True},
    "channels-last + benchmark": {"pad_channels": False, "channels_last": True},
    "complex istft": {"complex_istft": True},  # not a unit option: the pre-5f7d2d3 in-graph iSTFT, patched in
    "chunked group norm": {"group_norm": "chunked"},
    # not a unit option: chunked group norm under the rule of df64d55 (the last dim alone, any row count)
    "chunked last dim": {"group_norm": "chunked", "last_dim_chunks": True},
    "chunked group norm + complex istft": {"group_norm": "chunked", "complex_istft": True},
    # not a unit option: channels-last copies of the weight constants made by each call, as before the pass
    # laid them out once
    "weight copies per call": {"weight_copies": True},
    "max-autotune": {"autotune": True},
}


def _complex_layout_ispec(z: torch.Tensor, length: int, n_fft: int = 4096, traceable: bool = False) -> torch.Tensor:
    """The traceable iSTFT as it was before commit 5f7d2d3 (complex ``cat``, two complex pads, a strided inverse
    FFT input): the variant ``complex istft`` times it beside the frames-first real-view layout."""
    hop = hop_length(n_fft)
    *other, freqs, frames = z.shape
    z = ispec_padded(z.reshape(-1, freqs, frames))
    pad = hop // 2 * 3
    le = hop * math.ceil(length / hop) + 2 * pad
    return istft_fold(z, n_fft, hop, le)[..., pad: pad + length].reshape(*other, length)


def main(size: str = "full", names: list[str] | None = None, expert: bool = False) -> dict[str, Any]:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.mha.set_fastpath_enabled(False)
    model = random_htdemucs(0, **SIZES[size]).to(dev).eval()
    seg_len = int(model.segment * model.samplerate)
    clip, _ = test_clip(60.0 if size == "full" else 4.0)
    mix = clip.to(dev)
    n_seg = math.ceil(mix.shape[-1] / int(0.75 * seg_len))
    inner, stft = FullHybrid().build(model), TorchSTFT()
    # group norm by reductions on the CPU too: it is what a channels-last input meets on CUDA
    group_norm = "auto" if dev.type == "cuda" else "reduce"
    say("device", torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "segments", n_seg)
    out_path = os.path.join(os.environ.get("OUT", "/tmp"), "gpu_graph_passes.json")
    res: dict[str, Any] = {}
    ref = None
    expert_s = None
    if expert and dev.type == "cuda":
        fwd = expert_forward(model, True)

        def run_expert() -> torch.Tensor:
            return separate(fwd, mix, seg_len, len(model.sources), 0.25, 1.0, n_seg)

        t0 = time.perf_counter()
        run_expert()
        first = time.perf_counter() - t0
        expert_s, samples, _ = timed(run_expert, 7)
        res["expert compiled autocast fp16"] = {"wall_ms": expert_s * 1000, "samples_ms": [x * 1000 for x in samples],
                                                "first_call_s": first}
        say("expert", res["expert compiled autocast fp16"])
        torch._dynamo.reset()
    for name in names or list(VARIANTS):
        options = dict(VARIANTS[name])
        torch_stft.demucs_ispec = _complex_layout_ispec if options.pop("complex_istft", False) else demucs_ispec
        torch_unit._CHUNK_LAST_DIM_ONLY = options.pop("last_dim_chunks", False)
        torch_unit.channels_last_convolutions = functools.partial(
            channels_last_convolutions, constant_weights=not options.pop("weight_copies", False))
        unit = TorchUnit(TorchUnit.Params(**{"device": dev.type, "compile": "inductor", "group_norm": group_norm, **options}))
        ex = 0.1 * torch.randn(n_seg, 2, seg_len, device=dev)
        prepared = unit.prepare(inner, (spec_to_cac(stft.stft(ex, model.nfft)), ex))
        pipe = _pipeline(unit, prepared, Assignment.all_fp16(unit.ops(prepared)), inner, stft, model.nfft, dev)
        fn = padded_to_batch(pipe, n_seg)

        def sep(fn: Any = fn) -> torch.Tensor:
            return separate(fn, mix, seg_len, len(model.sources), 0.25, 1.0, n_seg)

        try:
            wall, samples, out = timed(sep, 7)
        except Exception as exc:  # a pass the compiler or cuDNN rejects: say so, keep the other variants
            res[name] = {"options": VARIANTS[name], "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            say(name, "failed", res[name]["error"])
            torch._dynamo.reset()
            continue
        row: dict[str, Any] = {"options": VARIANTS[name], "wall_ms": wall * 1000, "samples_ms": [s * 1000 for s in samples],
                               "compile_s": pipe.compile_s}
        if expert_s:
            row["vs_expert_compiled"] = expert_s / wall
        out = out.float()
        if ref is None:
            ref = out
        else:
            row["vs_first_db"] = float(10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean().clamp_min(1e-30)))
        if dev.type == "cuda":
            row.update(kernel_profile(sep, top=14))
        res[name] = row
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        say(name, {k: v for k, v in row.items() if k not in ("top_kernels", "samples_ms")})
        torch._dynamo.reset()
    return res


if __name__ == "__main__":
    chosen = sys.argv[2] if len(sys.argv) > 2 else "all"
    main(sys.argv[1] if len(sys.argv) > 1 else "full", None if chosen == "all" else chosen.split(","),
         "expert" in sys.argv[3:])
