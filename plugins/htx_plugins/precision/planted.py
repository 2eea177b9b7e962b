"""A planted-fault surgery: HTDemucs with known op instances that overflow FP16 and nothing else changed.

``planted-faults`` wraps the ``full-hybrid`` inner model with two *gain stages*, one on the input waveform
(before the model) and one on ``wave_out`` (after it). A stage is three 1x1 convolutions with diagonal
weights ``2**a * I``, ``2**b * I`` and ``2**-(a+b) * I``. Powers of two make the stage exact in FP32 (the
inner model's output is bit-identical to ``full-hybrid``'s, so it matches the FP32 reference), while in FP16

- ``up2`` overflows: its output ``2**(a+b) * x`` exceeds 65504 as soon as ``|x| > 65504 / 2**(a+b)``;
- ``down`` overflows when it runs in FP16 even if ``up2`` is FP32: its input is cast to FP16;
- ``up1`` is harmless (``2**a * |x|`` stays far below 65504 for audio).

So the ops that must stay FP32 for finite output are exactly ``{up2, down}`` of each stage: four known
culprits. The benchmark (``htx bench search``) and the tests register it inline; it is not a built-in
plugin because it exists only to plant faults.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import nn

from htx.api import InnerModel, OpInfo, Params, Surgery

#: log2 gains of up1 and up2: wave values above 2**-22 * 65504 ~ 0.016 overflow in FP16.
GAIN_BITS = (10, 12)


def _diagonal_conv(channels: int, scale: float) -> nn.Conv1d:
    conv = nn.Conv1d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels)[:, :, None] * scale)
    return conv


class GainStage(nn.Module):
    """``x -> up1 -> up2 -> down`` with 1x1 diagonal convs; the identity in FP32, an overflow in FP16."""

    def __init__(self, channels: int, bits: tuple[int, int] = GAIN_BITS) -> None:
        super().__init__()
        self.up1 = _diagonal_conv(channels, 2.0 ** bits[0])
        self.up2 = _diagonal_conv(channels, 2.0 ** bits[1])
        self.down = _diagonal_conv(channels, 2.0 ** -(bits[0] + bits[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, L]
        return self.down(self.up2(self.up1(x)))


class PlantedInner(InnerModel):
    """``full-hybrid`` with a gain stage on the input waveform and one on ``wave_out``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from htx_plugins.surgery.full_hybrid import FullHybridInner

        self.full = FullHybridInner(model)
        channels = model.audio_channels
        self.stage_in = GainStage(channels)
        self.stage_out = GainStage(channels * len(model.sources))

    def forward(self, spec_cac: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mix = self.stage_in(mix)
        spec_out, wave_out = self.full(spec_cac, mix)
        B, S, C, L = wave_out.shape
        wave_out = self.stage_out(wave_out.reshape(B, S * C, L)).reshape(B, S, C, L)
        return spec_out, wave_out


class PlantedFaults(Surgery):
    """``full-hybrid`` plus two gain stages whose ``up2`` and ``down`` convs overflow FP16 (4 known culprits).

    Example (registered inline, e.g. in a test)::

        from htx_plugins.precision.planted import planted_plugin
        from htx.plugins import build_registry, get_plugin_manager
        registry = build_registry(get_plugin_manager(extra_plugins=(planted_plugin(),)))
        # config: surgery: [planted-faults]
    """

    name = "planted-faults"
    Params = Params

    def build(self, model: nn.Module) -> InnerModel:
        from htx_plugins.surgery.full_hybrid import FullHybrid

        FullHybrid().check(model)
        return PlantedInner(model).eval()


def planted_plugin() -> ModuleType:
    """An inline plugin module registering :class:`PlantedFaults`."""
    from htx.api import module_plugin

    def htx_register_surgeries(register):  # noqa: ANN001 - pluggy hook signature
        register(PlantedFaults)

    return module_plugin("htx_planted_faults", htx_register_surgeries=htx_register_surgeries)


def planted_ops(ops: Sequence[OpInfo]) -> dict[str, list[str]]:
    """The planted op names by role, from a prepared ``planted-faults`` model's op list.

    The input stage runs before every other op and the output stage after every other op, so they are
    the first three and the last three ``conv`` ops in execution order.
    """
    convs = [op.name for op in ops if op.type == "conv"]
    if len(convs) < 6:
        raise ValueError(f"not a planted-faults model: only {len(convs)} conv ops")
    (in_up1, in_up2, in_down), (out_up1, out_up2, out_down) = convs[:3], convs[-3:]
    return {
        "culprits": [in_up2, in_down, out_up2, out_down],
        "harmless": [in_up1, out_up1],
        "first_overflow": [in_up2],
    }
