"""Built-in compute units, and their commands (``htx convert``, ``htx bench gpu|coreml|transfer|onnx``)."""

from htx.api import hookimpl
from htx_plugins.compute import gpu_bench, transfer_bench
from htx_plugins.compute.coreai import CoreAIUnit
from htx_plugins.compute.coreml import CoreMLUnit, commands
from htx_plugins.compute.onnxrt import OnnxUnit
from htx_plugins.compute.onnxrt import bench as onnx_bench
from htx_plugins.compute.torch_unit import TorchUnit


@hookimpl
def htx_register_compute_units(register):
    register(TorchUnit)
    register(CoreMLUnit)
    register(OnnxUnit)
    register(CoreAIUnit)


@hookimpl
def htx_register_commands(app, bench):
    app.command("convert")(commands.convert)
    bench.command("coreml")(commands.bench_coreml)
    bench.command("gpu")(gpu_bench.command)
    bench.command("transfer")(transfer_bench.command)
    bench.command("onnx")(onnx_bench.command)
