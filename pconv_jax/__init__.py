"""pconv_jax: image inpainting with partial convolutions (Liu et al., ECCV 2018) in JAX."""

from pconv_jax.network.unet import PartialConv, PConvUNet, composite
from pconv_jax.ops.pconv import partial_conv, plain_conv

__all__ = ["PConvUNet", "PartialConv", "composite", "partial_conv", "plain_conv"]
__version__ = "0.1.0"
