"""The surgery interface: cut an HTDemucs model into an STFT-free inner model a compute unit runs."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from htx.errors import ModelError
from htx.interfaces.base import Plugin


class InnerModel(nn.Module):
    """The STFT-free part of the model that a compute unit executes.

    ``forward(spec_cac, mix)`` takes the complex-as-channels spectrogram ``[B, 2C, F, T]`` and the
    waveform ``[B, C, L]`` and returns ``(spec_out [B, S, 2C, F, T], wave_out [B, S, C, L])``, with no
    complex tensors and no STFT.

    ``host_pre``/``host_post`` run on the host in FP32 around it (identity by default); a surgery that
    moves work out of the converted model overrides them. **The pipeline** (:class:`htx.pipeline.Pipeline`)
    calls them, never the compute unit: it calls ``host_pre(spec_cac, mix) -> (args, ctx)``, hands
    ``args`` to the compute unit's compiled callable (which runs ``forward(*args)`` only), and passes that
    output tuple and ``ctx`` to ``host_post``, which returns ``(spec_out, wave_out)``. A compute unit's
    ``prepare`` likewise receives ``host_pre``'s ``args`` as its example inputs. A surgery with
    ``needs_stft = False`` gets ``spec_cac=None`` in ``host_pre``; its ``host_post`` returns
    ``spec_out=None`` and the pipeline skips the iSTFT.
    """

    def host_pre(self, spec_cac: torch.Tensor | None, mix: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], Any]:
        if spec_cac is None:
            raise ModelError(f"{type(self).__name__} gets no spectrogram (its surgery has needs_stft = False): "
                             "override host_pre to pass what forward takes")
        return (spec_cac, mix), None

    def host_post(self, outputs: tuple[torch.Tensor, ...], ctx: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        spec_out, wave_out = outputs
        return spec_out, wave_out


class Surgery(Plugin):
    """Cuts an HTDemucs model into an :class:`InnerModel` for conversion.

    ``build(model)`` returns an :class:`InnerModel`. The model is a demucs ``HTDemucs``; its own
    ``forward`` runs the STFT inside, so an inner model re-implements the part between the STFT and the
    iSTFT. ``check(model)`` refuses models the surgery does not apply to (architecture only).

    Example (a complete plugin that imports no built-in: the time branch alone, ``needs_stft = False``)::

        from htx.api import InnerModel, Surgery, hookimpl

        class TimeBranch(InnerModel):
            def __init__(self, model):
                super().__init__()
                self.m = model
            def host_pre(self, spec_cac, mix):  # spec_cac is None: needs_stft is False
                return (mix,), None
            def forward(self, mix):
                m = self.m
                mean, std = mix.mean(dim=(1, 2), keepdim=True), mix.std(dim=(1, 2), keepdim=True)
                xt, saved, lengths = (mix - mean) / (1e-5 + std), [], []
                for enc in m.tencoder:
                    lengths.append(xt.shape[-1])
                    xt = enc(xt)
                    saved.append(xt)
                for dec in m.tdecoder:
                    xt, _ = dec(xt, saved.pop(-1), lengths.pop(-1))
                wave = xt.view(xt.shape[0], len(m.sources), -1, xt.shape[-1]) * std[:, None] + mean[:, None]
                return (wave[..., : mix.shape[-1]],)
            def host_post(self, outputs, ctx):
                return None, outputs[0]

        class MyTimeOnly(Surgery):
            '''The time branch of HTDemucs alone (no spectrogram).'''
            name = "my-time-only"
            needs_stft = False
            def build(self, model):
                return TimeBranch(model)

        @hookimpl
        def htx_register_surgeries(register):
            register(MyTimeOnly)

    ``htx validate`` builds no weights; the pipeline calls ``host_pre``/``host_post`` (see
    :class:`InnerModel`). ``docs/surgery.md`` has a complete hybrid surgery that imports only ``htx.api``.
    """

    kind = "surgery"
    #: False for surgeries that need no spectrogram (the STFT backend is then skipped).
    needs_stft: ClassVar[bool] = True

    def check(self, model: nn.Module) -> None:
        """Raise :class:`htx.errors.ModelError` when this surgery does not apply to ``model``.

        Look at the architecture only (module types, config attributes), never at weight values:
        ``htx validate`` passes a skeleton built on the meta device (see ``htx.models.model_skeleton``).
        """
        if type(model).__name__ != "HTDemucs":
            raise ModelError(f"surgery {self.name!r} needs a demucs HTDemucs model, got {type(model).__name__}")

    @abstractmethod
    def build(self, model: nn.Module) -> InnerModel:
        """The STFT-free inner model for ``model`` (an ``HTDemucs`` in FP32 on the CPU)."""


__all__ = ["InnerModel", "Surgery"]
