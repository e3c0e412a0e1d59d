"""pconv_jax: image inpainting with partial convolutions (Liu et al., ECCV 2018) in JAX.

The names below are imported on first use, so that `import pconv_jax.config` (and the
commands' `--help`) does not load JAX.
"""

import importlib

_EXPORTS = {
    "PConvUNet": "pconv_jax.network.unet",
    "PartialConv": "pconv_jax.network.unet",
    "composite": "pconv_jax.network.unet",
    "partial_conv": "pconv_jax.ops.pconv",
    "plain_conv": "pconv_jax.ops.pconv",
}
_SUBMODULES = ("functional",)

__all__ = ["PConvUNet", "PartialConv", "composite", "functional", "partial_conv", "plain_conv"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
