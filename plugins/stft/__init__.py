"""Built-in STFT backends."""

from htx.hookspecs import hookimpl
from htx_plugins.stft.torch_stft import TorchSTFT


@hookimpl
def htx_register_stft_backends(register):
    register(TorchSTFT)
