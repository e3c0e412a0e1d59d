"""Frozen Inception-v3 of the FID reference implementation (pytorch-fid's `FIDInceptionV3`).

The topology is torchvision's `inception_v3` (1008 classes, no auxiliary head) with the blocks
that pytorch-fid patches to reproduce TensorFlow's 2015-12-05 graph: the average pools of the
A, C and first E blocks leave the zero padding out of their averages, and the last E block pools
its side branch with a max pool. Each conv is followed by BatchNorm (eps 0.001, inference mode)
and ReLU; the BatchNorm is folded into the conv's kernel and bias when the weights are loaded
(`fold_batch_norm`), so the network below is conv + bias + ReLU throughout.

Like `vgg16.py`, the network is a pure function over a parameter pytree (`InceptionParams`):
the weights never get a gradient. `pconv_jax.weights.inception_files` reads them from pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct as flax_struct

INPUT_SIZE = 299  # the reference resizes every image to 299x299
NUM_CLASSES = 1008  # TensorFlow's graph: 1000 ImageNet classes and 8 unused ones
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3
# Full float32 products: GPUs would otherwise use TF32 and move the features by ~1e-3.
_PRECISION = jax.lax.Precision.HIGHEST


class ConvSpec(NamedTuple):
    """One conv + BatchNorm + ReLU unit (torchvision's `BasicConv2d`)."""

    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)


def _block_a(c_in: int, pool_features: int) -> dict[str, ConvSpec]:
    return {
        "branch1x1": ConvSpec(c_in, 64, (1, 1)),
        "branch5x5_1": ConvSpec(c_in, 48, (1, 1)),
        "branch5x5_2": ConvSpec(48, 64, (5, 5), padding=(2, 2)),
        "branch3x3dbl_1": ConvSpec(c_in, 64, (1, 1)),
        "branch3x3dbl_2": ConvSpec(64, 96, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3": ConvSpec(96, 96, (3, 3), padding=(1, 1)),
        "branch_pool": ConvSpec(c_in, pool_features, (1, 1)),
    }


def _block_b(c_in: int) -> dict[str, ConvSpec]:
    return {
        "branch3x3": ConvSpec(c_in, 384, (3, 3), stride=2),
        "branch3x3dbl_1": ConvSpec(c_in, 64, (1, 1)),
        "branch3x3dbl_2": ConvSpec(64, 96, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3": ConvSpec(96, 96, (3, 3), stride=2),
    }


def _block_c(c_in: int, c7: int) -> dict[str, ConvSpec]:
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorised 7x7
    return {
        "branch1x1": ConvSpec(c_in, 192, (1, 1)),
        "branch7x7_1": ConvSpec(c_in, c7, (1, 1)),
        "branch7x7_2": ConvSpec(c7, c7, row[0], padding=row[1]),
        "branch7x7_3": ConvSpec(c7, 192, col[0], padding=col[1]),
        "branch7x7dbl_1": ConvSpec(c_in, c7, (1, 1)),
        "branch7x7dbl_2": ConvSpec(c7, c7, col[0], padding=col[1]),
        "branch7x7dbl_3": ConvSpec(c7, c7, row[0], padding=row[1]),
        "branch7x7dbl_4": ConvSpec(c7, c7, col[0], padding=col[1]),
        "branch7x7dbl_5": ConvSpec(c7, 192, row[0], padding=row[1]),
        "branch_pool": ConvSpec(c_in, 192, (1, 1)),
    }


def _block_d(c_in: int) -> dict[str, ConvSpec]:
    return {
        "branch3x3_1": ConvSpec(c_in, 192, (1, 1)),
        "branch3x3_2": ConvSpec(192, 320, (3, 3), stride=2),
        "branch7x7x3_1": ConvSpec(c_in, 192, (1, 1)),
        "branch7x7x3_2": ConvSpec(192, 192, (1, 7), padding=(0, 3)),
        "branch7x7x3_3": ConvSpec(192, 192, (7, 1), padding=(3, 0)),
        "branch7x7x3_4": ConvSpec(192, 192, (3, 3), stride=2),
    }


def _block_e(c_in: int) -> dict[str, ConvSpec]:
    return {
        "branch1x1": ConvSpec(c_in, 320, (1, 1)),
        "branch3x3_1": ConvSpec(c_in, 384, (1, 1)),
        "branch3x3_2a": ConvSpec(384, 384, (1, 3), padding=(0, 1)),
        "branch3x3_2b": ConvSpec(384, 384, (3, 1), padding=(1, 0)),
        "branch3x3dbl_1": ConvSpec(c_in, 448, (1, 1)),
        "branch3x3dbl_2": ConvSpec(448, 384, (3, 3), padding=(1, 1)),
        "branch3x3dbl_3a": ConvSpec(384, 384, (1, 3), padding=(0, 1)),
        "branch3x3dbl_3b": ConvSpec(384, 384, (3, 1), padding=(1, 0)),
        "branch_pool": ConvSpec(c_in, 192, (1, 1)),
    }


# Mixed blocks in network order: (torch module name, block kind, its convs).
MIXED_BLOCKS: tuple[tuple[str, str, dict[str, ConvSpec]], ...] = (
    ("Mixed_5b", "A", _block_a(192, 32)),
    ("Mixed_5c", "A", _block_a(256, 64)),
    ("Mixed_5d", "A", _block_a(288, 64)),
    ("Mixed_6a", "B", _block_b(288)),
    ("Mixed_6b", "C", _block_c(768, 128)),
    ("Mixed_6c", "C", _block_c(768, 160)),
    ("Mixed_6d", "C", _block_c(768, 160)),
    ("Mixed_6e", "C", _block_c(768, 192)),
    ("Mixed_7a", "D", _block_d(768)),
    ("Mixed_7b", "E_avg", _block_e(1280)),
    ("Mixed_7c", "E_max", _block_e(2048)),
)
_STEM: tuple[tuple[str, ConvSpec], ...] = (
    ("Conv2d_1a_3x3", ConvSpec(3, 32, (3, 3), stride=2)),
    ("Conv2d_2a_3x3", ConvSpec(32, 32, (3, 3))),
    ("Conv2d_2b_3x3", ConvSpec(32, 64, (3, 3), padding=(1, 1))),
    ("Conv2d_3b_1x1", ConvSpec(64, 80, (1, 1))),
    ("Conv2d_4a_3x3", ConvSpec(80, 192, (3, 3))),
)

# Every conv unit by its torch module name ("Mixed_5b.branch1x1"), in the network's order.
INCEPTION_CONVS: dict[str, ConvSpec] = {
    **dict(_STEM),
    **{f"{block}.{name}": spec for block, _, convs in MIXED_BLOCKS for name, spec in convs.items()},
}


@flax_struct.dataclass
class InceptionParams:
    """Frozen Inception-v3 weights with BatchNorm folded in.

    Attributes:
      convs: {conv name: {'kernel': (kh, kw, C_in, C_out) HWIO, 'bias': (C_out,)}}, names as in
        `INCEPTION_CONVS`.
      fc_kernel: (2048, 1008), the classifier's weight (its bias is not used: see
        `inception_features`).
    """

    convs: dict[str, dict[str, jax.Array]]
    fc_kernel: jax.Array


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


def resize_and_scale(images: jax.Array) -> jax.Array:
    """The reference's input handling: bilinear resize to 299x299 as `F.interpolate(...,
    mode='bilinear', align_corners=False)` (half-pixel centres, NO antialiasing, also when
    downscaling), then [0, 1] -> [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("inception_features expects RGB images (N, H, W, 3) in [0, 1]; "
                         f"got shape {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"inception_features expects float images in [0, 1]; got dtype "
                         f"{images.dtype} (divide 8-bit images by 255 first).")
    x = images.astype(jnp.float32)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        # jax.image.resize antialiases when downscaling unless told not to; torch never does.
        x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear",
                             antialias=False)
    return 2.0 * x - 1.0


def _conv(convs: Mapping[str, Mapping[str, jax.Array]], name: str, x: jax.Array) -> jax.Array:
    spec = INCEPTION_CONVS[name]
    (ph, pw), s = spec.padding, spec.stride
    y = jax.lax.conv_general_dilated(
        x, convs[name]["kernel"], window_strides=(s, s), padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION,
    )
    return jax.nn.relu(y + convs[name]["bias"])


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 pad)


def _avg_pool_excluding_padding(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, averaging over the in-image pixels only (`count_include_pad=
    False`, as TensorFlow's 'SAME' average pool)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count


def _mixed(convs, block: str, kind: str, x: jax.Array) -> jax.Array:
    def c(name: str, inp: jax.Array) -> jax.Array:
        return _conv(convs, f"{block}.{name}", inp)

    if kind == "A":
        b5 = c("branch5x5_2", c("branch5x5_1", x))
        b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
        pool = c("branch_pool", _avg_pool_excluding_padding(x))
        return jnp.concatenate([c("branch1x1", x), b5, b3, pool], axis=-1)
    if kind == "B":
        b3dbl = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
        return jnp.concatenate([c("branch3x3", x), b3dbl, _max_pool(x, 2)], axis=-1)
    if kind == "C":
        b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
        b7dbl = x
        for i in range(1, 6):
            b7dbl = c(f"branch7x7dbl_{i}", b7dbl)
        pool = c("branch_pool", _avg_pool_excluding_padding(x))
        return jnp.concatenate([c("branch1x1", x), b7, b7dbl, pool], axis=-1)
    if kind == "D":
        b3 = c("branch3x3_2", c("branch3x3_1", x))
        b7 = x
        for i in range(1, 5):
            b7 = c(f"branch7x7x3_{i}", b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)
    # E: the first one average-pools its side branch, the last one max-pools it (pytorch-fid's
    # FIDInceptionE_1 / FIDInceptionE_2, as in TensorFlow's graph).
    b3 = c("branch3x3_1", x)
    b3 = jnp.concatenate([c("branch3x3_2a", b3), c("branch3x3_2b", b3)], axis=-1)
    b3dbl = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
    b3dbl = jnp.concatenate([c("branch3x3dbl_3a", b3dbl), c("branch3x3dbl_3b", b3dbl)], axis=-1)
    pooled = _avg_pool_excluding_padding(x) if kind == "E_avg" else _max_pool(x, 1, padding=1)
    return jnp.concatenate([c("branch1x1", x), b3, b3dbl, c("branch_pool", pooled)], axis=-1)


def network(params: InceptionParams, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The network on already resized and scaled input (`resize_and_scale`): (pool, logits)."""
    convs = jax.lax.stop_gradient(params.convs)
    for i, (name, _) in enumerate(_STEM):
        x = _conv(convs, name, x)
        if i in (2, 4):  # after Conv2d_2b_3x3 and Conv2d_4a_3x3
            x = _max_pool(x, 2)
    for block, kind, _ in MIXED_BLOCKS:
        x = _mixed(convs, block, kind, x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = jnp.matmul(pool, jax.lax.stop_gradient(params.fc_kernel), precision=_PRECISION)
    return pool, logits


def inception_features(params: InceptionParams, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inception-v3 pool features and unbiased logits of RGB images in [0, 1], NHWC, any size.

    Input handling is pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`
    (see `resize_and_scale`); the computation runs in float32.

    Returns:
      pool: (N, 2048), the final average pool: the features FID compares.
      logits: (N, 1008), `pool @ fc_weight.T` WITHOUT the classifier's bias. The Inception Score
        of the original implementation (openai/improved-gan `inception_score.py`, also
        torch-fidelity's `logits_unbiased`) takes the softmax of these unbiased logits.
    """
    return network(params, resize_and_scale(images))


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def fold_batch_norm(conv_weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                    mean: np.ndarray, var: np.ndarray) -> dict[str, np.ndarray]:
    """A bias-free torch conv (OIHW) followed by inference-mode BatchNorm, as one HWIO conv
    with bias (computed in float64, stored in float32)."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + BATCH_NORM_EPS)
    kernel = np.asarray(conv_weight, np.float64) * scale[:, None, None, None]
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return {"kernel": np.transpose(kernel, (2, 3, 1, 0)).astype(np.float32),
            "bias": bias.astype(np.float32)}


def make_params(convs: Mapping[str, Mapping[str, np.ndarray]],
                fc_kernel: np.ndarray) -> InceptionParams:
    """Folded conv weights ({name: {'kernel' HWIO, 'bias'}}) and the (2048, 1008) fc kernel."""
    missing = sorted(set(INCEPTION_CONVS) - set(convs))
    if missing:
        raise KeyError(f"Inception parameters lack convs {missing[:3]}.")
    return InceptionParams(
        convs={n: {k: jnp.asarray(v, jnp.float32) for k, v in convs[n].items()}
               for n in INCEPTION_CONVS},
        fc_kernel=jnp.asarray(fc_kernel, jnp.float32),
    )


def random_inception(key: jax.Array) -> InceptionParams:
    """An Inception-v3 with RANDOM (He-normal, identity BatchNorm) weights: for tests and
    benchmarks only. Its features mean nothing; never report FID or IS computed with it.
    `key` must be concrete (call it outside `jit`)."""
    # NumPy draws from the key's bits: XLA takes long to compile threefry for 24M samples.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    convs = {}
    for name, spec in INCEPTION_CONVS.items():
        kh, kw = spec.kernel
        std = np.sqrt(2.0 / (kh * kw * spec.c_in))
        kernel = rng.standard_normal((kh, kw, spec.c_in, spec.c_out), np.float32) * std
        convs[name] = {"kernel": kernel, "bias": np.zeros((spec.c_out,), np.float32)}
    fc = rng.standard_normal((FEATURE_DIM, NUM_CLASSES), np.float32) / np.sqrt(FEATURE_DIM)
    return make_params(convs, fc)
