"""LPIPS (Zhang et al. 2018), VGG variant, version 0.1: what `lpips.LPIPS(net='vgg')(a, b)` of
the `lpips` package (0.1.4) computes with its defaults, in JAX, for images in [0, 1].

For images a, b (N, H, W, 3) in [0, 1]:

    x -> (2x - 1 - shift) / scale            shift (-.030, -.088, -.188), scale (.458, .448, .450)
    f_l = VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of it    (l = 0..4)
    f_l -> f_l / (||f_l||_2 over channels + 1e-10)                    at each position
    LPIPS = sum_l mean_{h,w} sum_c w_l[c] (f_l(a) - f_l(b))^2          one value per pair, (N,)

The w_l >= 0 are the calibration weights learned on human judgements (`lin0..lin4`, shipped in
the `lpips` package as `weights/v0.1/vgg.pth`); the backbone is torchvision's ImageNet VGG16,
the file the loss reads (`config.loss.vgg_weights`). Lower means more similar; identical
images give 0.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pconv_jax.network.vgg16 import NUM_BLOCKS, VGGParams, num_blocks, vgg16_relu_features
from pconv_jax.weights import checks
from pconv_jax.weights.torch_pickle import read_torch_file
from pconv_jax.weights.vgg16_files import load_vgg16

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # added to the feature norm (not under the square root), as lpips does
CHANNELS = (64, 128, 256, 512, 512)  # of relu1_2 .. relu5_3
CALIBRATION_KEYS = tuple(f"lin{k}.model.1.weight" for k in range(len(CHANNELS)))
PACKAGE_FILE = os.path.join("weights", "v0.1", "vgg.pth")  # inside the lpips package

CALIBRATION_HELP = (
    "LPIPS's calibration weights ship with the `lpips` pip package as "
    f"`lpips/{PACKAGE_FILE}` (`pip install --no-deps lpips` installs it without torch, and "
    "the file is then found by itself), or take the file `lpips/weights/v0.1/vgg.pth` of "
    "https://github.com/richzhang/PerceptualSimilarity (BSD-2-Clause); name it with "
    "`--config.eval.lpips_weights=PATH`."
)

Calibration = tuple[np.ndarray, ...]  # w_0 .. w_4, shapes (64,), (128,), (256,), (512,), (512,)


def default_lpips_weights() -> str | None:
    """`weights/v0.1/vgg.pth` of the installed `lpips` package, or None.

    The package is located, never imported (importing it imports torch): `find_spec` of a
    top-level name only searches `sys.path`.
    """
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):  # ValueError: a loaded `lpips` module without a spec
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, PACKAGE_FILE)
        if os.path.isfile(path):
            return path
    return None


def load_lpips_calibration(path: str | os.PathLike | None = None) -> Calibration:
    """Reads the calibration weights `lin0..lin4.model.1.weight` (1, C, 1, 1) of an LPIPS VGG
    `.pth` file with the project's safe reader (no torch, no code from the file runs).

    `path` None or empty: the installed `lpips` package's file (`default_lpips_weights`).
    Raises FileNotFoundError saying where the file comes from, KeyError naming a missing key,
    ValueError naming the key and file for a wrong shape or negative or non-finite weights.
    """
    path = os.fspath(path) if path else default_lpips_weights()
    if not path or not os.path.isfile(path):
        where = f"{path!r} not found" if path else "no file named and no `lpips` package found"
        raise FileNotFoundError(f"LPIPS calibration weights: {where}. {CALIBRATION_HELP}")
    state = read_torch_file(path)
    if not isinstance(state, Mapping):
        raise checks.WeightsFileError(
            f"{path}: expected a state_dict of LPIPS calibration weights, got "
            f"{type(state).__name__}.")
    weights = []
    for key, channels in zip(CALIBRATION_KEYS, CHANNELS):
        if key not in state:
            raise KeyError(f"LPIPS calibration weights {path}: missing key '{key}' (is this the "
                           f"VGG file `{PACKAGE_FILE}` of the lpips package?).")
        array = state[key]
        if not isinstance(array, np.ndarray) or array.shape != (1, channels, 1, 1):
            shape = getattr(array, "shape", type(array).__name__)
            raise checks.WeightsFileError(
                f"LPIPS calibration weights {path}: '{key}' has shape {shape}, expected "
                f"{(1, channels, 1, 1)} (is this the VGG file, not AlexNet's or SqueezeNet's?).")
        checks.check_weights(key, array, path)
        if np.any(array < 0):
            raise checks.WeightsFileError(
                f"LPIPS calibration weights {path}: '{key}' holds {int(np.sum(array < 0))} "
                "negative value(s); LPIPS's weights are non-negative (the file is corrupt or "
                "not LPIPS's).")
        weights.append(array.reshape(channels).astype(np.float32))
    return tuple(weights)


def _unit_normalize(features: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / (norm + NORM_EPS)


@jax.jit
def _lpips(vgg: VGGParams, calibration: Sequence[jax.Array], a: jax.Array,
           b: jax.Array) -> jax.Array:
    def features(x: jax.Array) -> tuple[jax.Array, ...]:
        x = (2.0 * x.astype(jnp.float32) - 1.0 - jnp.asarray(SHIFT, jnp.float32))
        x = x / jnp.asarray(SCALE, jnp.float32)
        return tuple(map(_unit_normalize, vgg16_relu_features(vgg, x, NUM_BLOCKS)))

    # One compiled pass applied to a, then to b (`lax.map`), not one pass over both batches
    # nor two separately compiled passes: XLA may round the same convolution differently by
    # an image's place in the batch or by how it fused the pass, and identical images must
    # give exactly 0.
    total = jnp.zeros((a.shape[0],), jnp.float32)
    for pair, w in zip(jax.lax.map(features, jnp.stack([a, b])), calibration):
        total += jnp.mean(jnp.square(pair[0] - pair[1]) @ w, axis=(1, 2))
    return total


def make_lpips(vgg: VGGParams, calibration: Calibration, precision: str = "highest"
               ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """LPIPS as a jitted, batched function `(a, b) -> (N,)` of images (N, H, W, 3) in [0, 1].

    `vgg`: all 5 blocks of torchvision's VGG16 (`load_vgg16(path, blocks=5)`);
    `calibration`: `load_lpips_calibration(...)`. Any H, W >= 16 (odd sizes pool as torch's).
    The computation runs in float32, its convolutions at `precision` (a
    `jax.default_matmul_precision` value): 'highest' gives the same numbers on every backend;
    'default' lets GPUs and TPUs use their faster reduced-precision float32 convolutions.
    """
    if num_blocks(vgg) < NUM_BLOCKS:
        raise ValueError(
            "LPIPS needs all 5 blocks of VGG16 (relu5_3) but the weights hold blocks "
            f"1..{num_blocks(vgg)}; load them with `load_vgg16(path, blocks=5)`.")
    if vgg.preprocessing != "torch":
        raise ValueError(
            "LPIPS was calibrated on torchvision's VGG16; these weights are Keras' "
            f"('{vgg.preprocessing}' preprocessing: the original Caffe weights), whose features "
            "differ. Use torchvision's vgg16-397923af.pth (or timm's vgg16.tv_in1k).")
    shapes = tuple(np.shape(w) for w in calibration)
    if shapes != tuple((c,) for c in CHANNELS):
        raise ValueError(f"LPIPS calibration weights have shapes {shapes}, expected "
                         f"{tuple((c,) for c in CHANNELS)}; read them with "
                         "`load_lpips_calibration`.")
    weights = tuple(jnp.asarray(w, jnp.float32) for w in calibration)

    def lpips(a: jax.Array, b: jax.Array) -> jax.Array:
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError("LPIPS takes two RGB image batches of the same shape (N, H, W, 3); "
                             f"got {a.shape} and {b.shape}.")
        if not (jnp.issubdtype(a.dtype, jnp.floating) and jnp.issubdtype(b.dtype, jnp.floating)):
            raise ValueError(f"LPIPS takes float images in [0, 1]; got {a.dtype} and {b.dtype} "
                             "(divide 8-bit images by 255).")
        if min(a.shape[1:3]) < 16:
            raise ValueError(f"LPIPS needs images of at least 16x16 pixels (VGG16 pools 4 "
                             f"times); got {a.shape[1]}x{a.shape[2]}.")
        with jax.default_matmul_precision(precision):
            return _lpips(vgg, weights, a, b)

    return lpips


def load_lpips(vgg_weights: str | os.PathLike,
               calibration_weights: str | os.PathLike | None = None
               ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`make_lpips` from files: all 13 convs of the VGG16 file (`config.loss.vgg_weights`) and
    the calibration file (None: the installed `lpips` package's). Missing files raise
    FileNotFoundError saying where each comes from."""
    calibration = load_lpips_calibration(calibration_weights)
    return make_lpips(load_vgg16(vgg_weights, blocks=NUM_BLOCKS), calibration)
