"""Frozen VGG16 feature extractor: pool1..pool3 for the loss, relu1_2..relu5_3 for LPIPS.

The network is a pure function over a parameter pytree (`VGGParams`), so the weights
never enter an optimizer and get no gradient. `pconv_jax.weights.vgg16_files` reads them
from the file the user names (`config.loss.vgg_weights`). A `VGGParams` holds the convs of
its first 3 blocks (all the loss needs) or of all 5 (LPIPS).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct as flax_struct

# (our name, torchvision index in `features`, Keras layer name, C_in, C_out) of each conv.
VGG16_CONVS: tuple[tuple[str, int, str, int, int], ...] = (
    ("conv1_1", 0, "block1_conv1", 3, 64),
    ("conv1_2", 2, "block1_conv2", 64, 64),
    ("conv2_1", 5, "block2_conv1", 64, 128),
    ("conv2_2", 7, "block2_conv2", 128, 128),
    ("conv3_1", 10, "block3_conv1", 128, 256),
    ("conv3_2", 12, "block3_conv2", 256, 256),
    ("conv3_3", 14, "block3_conv3", 256, 256),
    ("conv4_1", 17, "block4_conv1", 256, 512),
    ("conv4_2", 19, "block4_conv2", 512, 512),
    ("conv4_3", 21, "block4_conv3", 512, 512),
    ("conv5_1", 24, "block5_conv1", 512, 512),
    ("conv5_2", 26, "block5_conv2", 512, 512),
    ("conv5_3", 28, "block5_conv3", 512, 512),
)
# The conv names of each block; each block after the first starts with a 2x2 max pool.
_BLOCKS = (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"),
           ("conv4_1", "conv4_2", "conv4_3"), ("conv5_1", "conv5_2", "conv5_3"))
NUM_BLOCKS = len(_BLOCKS)
LOSS_BLOCKS = 3  # the perceptual and style losses read pool1..pool3


def block_convs(blocks: int) -> tuple[tuple[str, int, str, int, int], ...]:
    """The `VGG16_CONVS` entries of the first `blocks` blocks (conv1_1 .. conv{blocks}_*)."""
    if not 1 <= blocks <= NUM_BLOCKS:
        raise ValueError(f"VGG16 has blocks 1..{NUM_BLOCKS}; got {blocks}.")
    names = {name for block in _BLOCKS[:blocks] for name in block}
    return tuple(c for c in VGG16_CONVS if c[0] in names)


def num_blocks(params: VGGParams) -> int:
    """How many leading blocks of VGG16 `params` holds completely."""
    return next((i for i, block in enumerate(_BLOCKS)
                 if not all(name in params.convs for name in block)), NUM_BLOCKS)


# 'torch': RGB in [0, 1], ImageNet mean/std (torchvision, timm).
# 'caffe': BGR in [0, 255] minus the BGR channel means (Keras' original VGG16 weights).
PREPROCESSING_MODES = ("torch", "caffe")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@flax_struct.dataclass
class VGGParams:
    """Frozen VGG16 conv weights: conv1_1..conv3_3, or all 13 convs.

    Attributes:
      convs: {layer name: {'kernel': (3, 3, C_in, C_out) HWIO, 'bias': (C_out,)}}, the convs
        of blocks 1..3 or 1..5.
      preprocessing: 'torch' or 'caffe' (static: selects the input normalisation).
    """

    convs: dict[str, dict[str, jax.Array]]
    preprocessing: str = flax_struct.field(pytree_node=False, default="torch")


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


def preprocess(images: jax.Array, preprocessing: str) -> jax.Array:
    """Maps RGB images in [0, 1] (NHWC) to the input the VGG weights were trained on."""
    if preprocessing == "torch":
        mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
        std = jnp.asarray(IMAGENET_STD, images.dtype)
        return (images - mean) / std
    if preprocessing == "caffe":
        bgr = images[..., ::-1] * 255.0
        return bgr - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
    raise ValueError(f"Unknown VGG preprocessing {preprocessing!r}; "
                     f"expected one of {PREPROCESSING_MODES}.")


def _conv3x3_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jax.nn.relu(y + bias.astype(x.dtype))


def _max_pool2x2(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params: VGGParams, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the (pool1, pool2, pool3) activations of RGB images in [0, 1], NHWC.

    Shapes for an (N, H, W, 3) input: (N, H/2, W/2, 64), (N, H/4, W/4, 128),
    (N, H/8, W/8, 256). The computation runs in the images' dtype. No gradient
    reaches the weights (they are frozen); gradients do flow to the images.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("vgg16_features expects RGB images (N, H, W, 3); "
                         f"got shape {images.shape}.")
    convs = jax.lax.stop_gradient(params.convs)
    x = preprocess(images, params.preprocessing)
    pools = []
    for block in _BLOCKS[:LOSS_BLOCKS]:
        for name in block:
            x = _conv3x3_relu(x, convs[name]["kernel"], convs[name]["bias"])
        x = _max_pool2x2(x)
        pools.append(x)
    return tuple(pools)


def vgg16_relu_features(params: VGGParams, inputs: jax.Array,
                        blocks: int = NUM_BLOCKS) -> tuple[jax.Array, ...]:
    """relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the first `blocks` of them), NHWC.

    `inputs` (N, H, W, 3) are taken as they are: apply `preprocess` first, or the scaling a
    metric was calibrated with (LPIPS has its own). Shapes: (N, H, W, 64), (N, H/2, W/2, 128),
    (N, H/4, W/4, 256), (N, H/8, W/8, 512), (N, H/16, W/16, 512) (pools floor odd sizes, as
    torch's). The weights get no gradient; the inputs do.
    """
    if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise ValueError("vgg16_relu_features expects RGB inputs (N, H, W, 3); "
                         f"got shape {inputs.shape}.")
    if blocks > num_blocks(params):
        raise ValueError(
            f"relu{blocks}_* needs VGG16 blocks 1..{blocks}, but these weights hold blocks "
            f"1..{num_blocks(params)} only; load them with `load_vgg16(path, blocks={blocks})`.")
    convs = jax.lax.stop_gradient(params.convs)
    x, relus = inputs, []
    for i, block in enumerate(_BLOCKS[:blocks]):
        if i:
            x = _max_pool2x2(x)
        for name in block:
            x = _conv3x3_relu(x, convs[name]["kernel"], convs[name]["bias"])
        relus.append(x)
    return tuple(relus)


def random_vgg16(key: jax.Array, preprocessing: str = "torch",
                 blocks: int = LOSS_BLOCKS) -> VGGParams:
    """A VGG16 with RANDOM (He-normal) weights (blocks 1..`blocks`): for tests and
    benchmarks only.

    Its features mean nothing; never use it for a real perceptual or style loss or a
    metric. `key` must be concrete (call it outside `jit`). The first convs' weights do
    not depend on `blocks`.
    """
    # NumPy draws from the key's bits: XLA takes seconds to compile threefry for 1.7M samples.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    convs = {}
    for name, _, _, c_in, c_out in block_convs(blocks):
        std = np.sqrt(2.0 / (9 * c_in))
        convs[name] = {
            "kernel": (std * rng.standard_normal((3, 3, c_in, c_out))).astype(np.float32),
            "bias": np.zeros((c_out,), np.float32),
        }
    return make_params(convs, preprocessing)

def make_params(convs: Mapping[str, Mapping[str, np.ndarray]], preprocessing: str) -> VGGParams:
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(f"Unknown VGG preprocessing {preprocessing!r}; "
                         f"expected one of {PREPROCESSING_MODES}.")
    return VGGParams(
        convs={n: {k: jnp.asarray(v, jnp.float32) for k, v in c.items()} for n, c in convs.items()},
        preprocessing=preprocessing,
    )
