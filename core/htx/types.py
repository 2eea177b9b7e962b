"""Op instances and precision assignments: the values every plugin kind and the core pass around."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OpInfo:
    """One op instance of a prepared model.

    ``name`` is the unit's own name, stable for a given model, surgery and input shape; ``type`` uses Core
    ML MIL op names (``conv``, ``linear``, ``matmul``, ``softmax``, ...); ``module`` and ``ordinal`` make
    the portable :attr:`key`. ``compute`` is False for reshape-like ops,
    which move data without arithmetic and do not count in ``fp16_op_fraction``.
    """

    name: str
    type: str
    compute: bool = True
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: the PyTorch module the op runs in, relative to the demucs model (``encoder.2.dconv.layers.0``;
    #: ``""`` for the model's own forward), and the op's ordinal among ops of its type in that module
    module: str = ""
    ordinal: int = 0

    @property
    def key(self) -> str:
        """The portable key ``"module|type|ordinal"``: the same op on every compute unit (:mod:`htx.identity`)."""
        return f"{self.module}|{self.type}|{self.ordinal}"


@dataclass(frozen=True)
class Assignment:
    """The op instances that run in low precision (FP16); every other op runs in FP32."""

    fp16: frozenset[str] = frozenset()

    @classmethod
    def all_fp32(cls) -> Assignment:
        return cls(frozenset())

    @classmethod
    def all_fp16(cls, ops: Iterable[OpInfo]) -> Assignment:
        return cls(frozenset(op.name for op in ops if op.compute))

    @classmethod
    def keep_fp32(cls, ops: Iterable[OpInfo], keep: Iterable[str]) -> Assignment:
        """All compute ops in FP16 except the op names in ``keep``."""
        keep = set(keep)
        return cls(frozenset(op.name for op in ops if op.compute and op.name not in keep))

    def is_fp16(self, op_name: str) -> bool:
        return op_name in self.fp16

    def fp16_fraction(self, ops: Sequence[OpInfo]) -> float:
        compute = [op for op in ops if op.compute]
        if not compute:
            return 0.0
        return sum(op.name in self.fp16 for op in compute) / len(compute)

    def fp32_ops(self, ops: Sequence[OpInfo]) -> list[str]:
        return [op.name for op in ops if op.compute and op.name not in self.fp16]


@dataclass
class OpStats:
    """Statistics of one op's output over one pass: max |x| over finite values, NaN and Inf counts."""

    max_abs: float = 0.0
    nan: int = 0
    inf: int = 0
    max_abs_input: float = 0.0
    inputs_finite: bool = True
    reduction_size: int = 0

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0


__all__ = ["Assignment", "OpInfo", "OpStats"]
