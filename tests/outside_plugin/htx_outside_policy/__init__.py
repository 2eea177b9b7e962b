"""A third-party precision policy: keep convolutions in FP32, everything else FP16."""

from htx.api import Assignment, StaticPolicy
from htx.hookspecs import hookimpl


class ConvFP32(StaticPolicy):
    """Everything FP16 except conv ops.

    Example config::

        precision: [conv-fp32]
    """

    name = "conv-fp32"

    def select(self, ops):
        return Assignment.keep_fp32(ops, [op.name for op in ops if op.type == "conv"])


@hookimpl
def htx_register_precision_policies(register):
    register(ConvFP32)
