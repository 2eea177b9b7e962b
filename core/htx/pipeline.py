"""One segment through the trial pipeline: STFT -> complex-as-channels -> inner model -> iSTFT.

The pipeline, not the compute unit, runs the inner model's ``host_pre``/``host_post``. It times its three
stages separately so a trial can report STFT, model and iSTFT latency, and it checks the STFT backend's
output shape against the contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from htx.errors import HtxError
from htx.interfaces.stft import STFTBackend
from htx.interfaces.surgery import InnerModel
from htx.spectrogram import cac_to_spec, spec_shape, spec_to_cac

__all__ = ["Pipeline", "StageTimes", "cac_to_spec", "spec_to_cac"]


@dataclass
class StageTimes:
    stft: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    istft: list[float] = field(default_factory=list)


class Pipeline:
    """Callable ``[B, C, L] -> [B, S, C, L]`` for segments of the model's length."""

    def __init__(
        self,
        inner: InnerModel,
        forward: Callable[..., Any] | None,
        stft: STFTBackend | None,
        n_fft: int,
        device: torch.device,
        sync: Callable[[], None] = lambda: None,
        needs_stft: bool = True,
    ) -> None:
        self.inner = inner
        self.forward = forward
        self.stft = stft
        self.n_fft = n_fft
        self.device = device
        self.sync = sync
        self.needs_stft = needs_stft
        self.times = StageTimes()
        #: one compiled callable for the whole segment path (``mix -> stems``), when the compute unit compiled
        #: one (:meth:`htx.api.ComputeUnit.compile_segment`): the STFT and iSTFT then run inside its graph and
        #: the ``model`` stage time covers all three
        self.segment: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def compile_s(self) -> float | None:
        """Seconds spent compiling the forward or segment graph so far; None when neither is compiled."""
        values = [getattr(f, "compile_s", None) for f in (self.forward, self.segment)]
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return sum(numbers) if numbers else None

    def segment_wrapper(
        self, in_graph: tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None,
    ) -> Callable[[Callable[..., Any]], Callable[[torch.Tensor], torch.Tensor]]:
        """``wrap(forward)``: the segment path around a model forward, ``mix [B, C, L] -> stems [B, S, C, L]``,
        with the STFT backend's in-graph ``(stft, istft)`` (:meth:`htx.api.STFTBackend.in_graph`), for a unit
        that traces it whole. ``in_graph`` may be None only for a surgery that needs no STFT."""
        if in_graph is None and self.needs_stft:
            raise HtxError("a segment graph of a surgery that needs an STFT needs the backend's in-graph STFT")

        def wrap(forward: Callable[..., Any]) -> Callable[[torch.Tensor], torch.Tensor]:
            def segment(mix: torch.Tensor) -> torch.Tensor:
                spec = spec_to_cac(in_graph[0](mix, self.n_fft)) if in_graph is not None else None
                args, ctx = self.inner.host_pre(spec, mix)
                outs = forward(*args)
                return self.waveform(tuple(outs), ctx, mix.shape[-1], istft=None if in_graph is None else in_graph[1])
            return segment

        wrap.key = None if in_graph is None or self.stft is None else self.stft.label  # type: ignore[attr-defined]
        return wrap

    def compile_with(
        self,
        in_graph: tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None,
        compile_segment: Callable[[Callable[..., Any]], Callable[[torch.Tensor], torch.Tensor] | None],
        compile_forward: Callable[[], Callable[..., Any]],
    ) -> Pipeline:
        """Take the unit's compiled segment graph, ``compile_segment(wrap)`` of :meth:`segment_wrapper`, where the
        STFT backend has an in-graph STFT (or the surgery needs none) and the unit gives one (not None); else
        its compiled forward, ``compile_forward()``, between the staged STFT and iSTFT."""
        if in_graph is not None or not self.needs_stft:
            self.segment = compile_segment(self.segment_wrapper(in_graph))
        if self.segment is None:
            self.forward = compile_forward()
        return self

    def reset_times(self) -> None:
        self.times = StageTimes()

    def _timed(self, bucket: list[float], fn: Callable[[], Any]) -> Any:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        bucket.append(time.perf_counter() - t0)
        return out

    def _backend(self) -> STFTBackend:
        if self.stft is None:
            raise HtxError("this surgery needs an STFT backend, and the pipeline has none")
        return self.stft

    def model_inputs(self, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        mix = mix.to(self.device, torch.float32)
        spec_cac = None
        if self.needs_stft:
            stft = self._backend()
            z = self._timed(self.times.stft, lambda: stft.stft(mix, self.n_fft))
            want = (*mix.shape[:-1], *spec_shape(mix.shape[-1], self.n_fft))
            if tuple(z.shape) != want:
                raise HtxError(
                    f"stft backend {stft.label!r} returned a spectrogram shaped {tuple(z.shape)} for audio "
                    f"{tuple(mix.shape)}; the contract is [..., n_fft // 2, ceil(L / hop)] = {want} (n_fft={self.n_fft}, "
                    "hop=n_fft // 4; see htx.api.STFTBackend)"
                )
            spec_cac = spec_to_cac(z.to(self.device))
        return self.inner.host_pre(spec_cac, mix)

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        segment = self.segment
        if segment is not None:
            mix = mix.to(self.device, torch.float32)
            with torch.no_grad():
                return self._timed(self.times.model, lambda: segment(mix)).float()
        forward = self.forward
        if forward is None:
            raise HtxError("this pipeline was built for recording (no assignment compiled); it cannot run")
        args, ctx = self.model_inputs(mix)
        with torch.no_grad():
            outs = self._timed(self.times.model, lambda: forward(*args))
        return self.waveform(tuple(outs), ctx, length)

    def waveform(
        self, outs: tuple[torch.Tensor, ...], ctx: Any, length: int,
        istft: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The inner model's outputs -> stems ``[B, S, C, L]``: ``host_post``, then the spectral branch through
        the iSTFT (the backend's, timed; or ``istft(z, length, n_fft)``) plus the time branch."""
        spec_out, wave_out = self.inner.host_post(outs, ctx)
        wave_out = wave_out.float()
        if spec_out is None:
            return wave_out
        zout = cac_to_spec(spec_out.float())
        if istft is not None:
            x = istft(zout, length, self.n_fft)
        else:
            stft = self._backend()
            x = self._timed(self.times.istft, lambda: stft.istft(zout, length, self.n_fft))
        return wave_out + x.to(wave_out.device)
