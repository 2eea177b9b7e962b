"""Built-in STFT backends."""

from htx.hookspecs import hookimpl
from htx_plugins.stft.numpy_stft import NumpySTFT
from htx_plugins.stft.torch_stft import TorchSTFT
from htx_plugins.stft.vdsp_stft import VDSPSTFT


@hookimpl
def htx_register_stft_backends(register):
    register(TorchSTFT)
    register(NumpySTFT)
    register(VDSPSTFT)
