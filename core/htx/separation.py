"""Chunked separation: segments of the model's training length, overlap-add between them.

:func:`separate` reproduces ``demucs.apply.apply_model(model, mix, shifts=0, split=True, overlap=...,
transition_power=...)`` for any per-segment function, so a pipeline built from a surgery, an STFT
backend and a compute unit can be compared sample for sample with the original model.

Two transitions between segments:

- ``demucs`` (default): demucs's triangular weights, segments ``overlap`` apart (``apply_model``'s output);
- ``linear``: segments overlap by a fixed ``crossfade_length`` (1 s in the seed implementations) and are
  joined with a linear crossfade; each segment has full weight outside its crossfade regions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SegmentFn = Callable[[torch.Tensor], torch.Tensor]  # [B, C, segment] -> [B, S, C, segment]
TRANSITIONS = ("demucs", "linear")


def transition_weight(segment_length: int, transition_power: float = 1.0, device: torch.device | None = None) -> torch.Tensor:
    """demucs's triangular weight, normalized to a maximum of 1 and raised to ``transition_power``."""
    weight = torch.cat([
        torch.arange(1, segment_length // 2 + 1, device=device),
        torch.arange(segment_length - segment_length // 2, 0, -1, device=device),
    ])
    return (weight / weight.max()) ** transition_power


def linear_weight(segment_length: int, crossfade_length: int, device: torch.device | None = None) -> torch.Tensor:
    """Full weight with linear ramps over the first and last ``crossfade_length`` samples.

    The ramps are ``k / (crossfade_length + 1)``, never zero, so where one segment's fade-out meets the
    next one's fade-in the two weights sum to exactly 1.
    """
    if not 0 < crossfade_length < segment_length:
        raise ValueError(f"crossfade_length {crossfade_length} must be between 1 and segment_length - 1 ({segment_length - 1})")
    ramp = torch.arange(1, crossfade_length + 1, device=device, dtype=torch.float32) / (crossfade_length + 1)
    weight = torch.ones(segment_length, device=device)
    weight[:crossfade_length] = ramp
    weight[segment_length - crossfade_length:] = ramp.flip(0)
    return weight


def chunk_offsets(length: int, segment_length: int, overlap: float) -> list[int]:
    stride = int((1 - overlap) * segment_length)
    return list(range(0, length, stride))


def padded_chunk(mix: torch.Tensor, offset: int, segment_length: int) -> tuple[torch.Tensor, int]:
    """The segment at ``offset`` padded to ``segment_length`` with context as demucs's ``TensorChunk.padded``."""
    total = mix.shape[-1]
    chunk_length = min(segment_length, total - offset)
    delta = segment_length - chunk_length
    start = offset - delta // 2
    end = start + segment_length
    correct_start, correct_end = max(0, start), min(total, end)
    out = F.pad(mix[..., correct_start:correct_end], (correct_start - start, end - correct_end))
    return out, chunk_length


def center_trim(x: torch.Tensor, length: int) -> torch.Tensor:
    delta = x.shape[-1] - length
    if delta == 0:
        return x
    return x[..., delta // 2: x.shape[-1] - (delta - delta // 2)]


def separate(
    fn: SegmentFn,
    mix: torch.Tensor,
    segment_length: int,
    num_sources: int,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    transition: str = "demucs",
    crossfade_length: int | None = None,
) -> torch.Tensor:
    """Separate ``mix [C, L]`` into ``[S, C, L]`` segment by segment with overlap-add.

    ``transition="demucs"`` uses ``overlap`` and ``transition_power`` exactly as ``apply_model``;
    ``transition="linear"`` ignores both and crossfades over ``crossfade_length`` samples.
    ``progress(done, total)`` is called after each batch of segments.
    """
    channels, length = mix.shape
    out = torch.zeros(num_sources, channels, length, device=mix.device)
    sum_weight = torch.zeros(length, device=mix.device)
    if transition == "demucs":
        weight = transition_weight(segment_length, transition_power, mix.device)
        offsets = chunk_offsets(length, segment_length, overlap)
    elif transition == "linear":
        if crossfade_length is None:
            raise ValueError("transition='linear' needs crossfade_length (samples)")
        weight = linear_weight(segment_length, crossfade_length, mix.device)
        offsets = list(range(0, length, segment_length - crossfade_length))
    else:
        raise ValueError(f"unknown transition {transition!r}; use one of {', '.join(TRANSITIONS)}")
    done = 0
    for b in range(0, len(offsets), batch_size):
        group = offsets[b: b + batch_size]
        chunks, lengths = zip(*(padded_chunk(mix, o, segment_length) for o in group))
        est = fn(torch.stack(chunks))
        for offset, chunk_length, seg_out in zip(group, lengths, est):
            seg_out = center_trim(seg_out, chunk_length)
            out[..., offset: offset + segment_length] += weight[:chunk_length] * seg_out.to(mix.device)
            sum_weight[offset: offset + segment_length] += weight[:chunk_length]
        done += len(group)
        if progress is not None:
            progress(done, len(offsets))
    return out / sum_weight
