"""Built-in STFT backends, and ``htx bench stft``."""

from htx.api import hookimpl
from htx_plugins.stft import bench as bench_module
from htx_plugins.stft.numpy_stft import NumpySTFT
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.stft.vdsp_stft import VDSPSTFT


@hookimpl
def htx_register_stft_backends(register):
    register(TorchSTFT)
    register(NumpySTFT)
    register(VDSPSTFT)


@hookimpl
def htx_register_commands(bench):
    bench.command("stft")(bench_module.command)
