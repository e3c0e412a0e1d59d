"""Image-quality metrics of the paper's Table 1, batched and jit-compiled: L1 (%), PSNR, SSIM.

All functions take images (N, H, W, C) with pixels in [0, 1] and return one value per image,
shape (N,). Average over images afterwards (the paper's table reports means over masks).

- L1: mean absolute difference in percent of the pixel range (100 * mean|a - b|).
- PSNR: 10 log10(1 / MSE) in dB, capped at `PSNR_CAP` = 100 dB, so identical images (MSE = 0)
  give exactly 100 dB instead of infinity and every mean stays finite.
- SSIM: Wang et al. (2004) with an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, computed per channel and averaged; the SSIM map is
  averaged over the "valid" window positions only (the same numbers as scikit-image's
  `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1)`, which filters with reflection and then crops the 5-pixel border).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

PSNR_CAP = 100.0  # dB reported for identical images (and the upper bound of every PSNR)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"metrics take two images batches of the same shape (N, H, W, C); "
                         f"got {a.shape} and {b.shape}")


@jax.jit
def l1_percent(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image mean absolute error in percent of the [0, 1] pixel range, shape (N,)."""
    _check_pair(a, b)
    return 100.0 * jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)),
                            axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnames="cap")
def psnr(a: jax.Array, b: jax.Array, cap: float = PSNR_CAP) -> jax.Array:
    """Per-image PSNR in dB for data range 1, capped at `cap` (identical images give `cap`)."""
    _check_pair(a, b)
    mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))
    # 10 log10(1/mse) >= cap  <=>  mse <= 10**(-cap/10); avoid log(0) on that branch.
    floor = 10.0 ** (-cap / 10.0)
    return jnp.where(mse > floor, -10.0 * jnp.log10(jnp.maximum(mse, floor)), cap)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian taps (size,) of the SSIM window (separable in 2-D)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _filter_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable 'valid' Gaussian filtering of (N, H, W, C), every channel on its own."""
    n, h, w, c = x.shape
    x = jnp.moveaxis(x, -1, 1).reshape(n * c, h, w, 1)  # channels to batch: one 1-ch conv
    k = taps.shape[0]
    dims = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, taps.reshape(k, 1, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dims, precision="highest")
    x = jax.lax.conv_general_dilated(x, taps.reshape(1, k, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dims, precision="highest")
    return x.reshape(n, c, h - k + 1, w - k + 1)


@jax.jit
def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image SSIM (Gaussian window 11, sigma 1.5), per channel then averaged, shape (N,)."""
    _check_pair(a, b)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                         f"got {a.shape[1]}x{a.shape[2]}")
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    taps = jnp.asarray(gaussian_window())
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class Metric:
    """One row of the evaluation tables."""
    title: str                    # the row's heading
    fmt: str                      # how a value is printed
    # (filled, target) -> one value per image, both (N, H, W, C) in [0, 1]; None for the metrics
    # a weights file's network computes (`learned_metrics`: LPIPS per image, FID and IS per set).
    per_image: Callable[..., jax.Array] | None = None
    settings: tuple[str, ...] = ()  # keyword arguments `per_image` takes from the eval settings


# Every metric `eval.py` knows, in table order (`config.eval.metrics` names them). A metric
# computed from the images alone is one entry here.
METRICS: dict[str, Metric] = {
    "l1": Metric("L1 (%)", "{:.2f}", l1_percent),
    "psnr": Metric("PSNR (dB)", "{:.2f}", psnr, settings=("cap",)),
    "ssim": Metric("SSIM", "{:.3f}", ssim),
    "lpips": Metric("LPIPS", "{:.4f}"),
    "fid": Metric("FID", "{:.2f}"),
    "is": Metric("IScore", "{:.3f}"),
}
IMAGE_METRICS = tuple(name for name, metric in METRICS.items() if metric.per_image)


@functools.partial(jax.jit, static_argnames=("names", "psnr_cap"))
def image_metrics(prediction: jax.Array, target: jax.Array, names: tuple[str, ...] = IMAGE_METRICS,
                  psnr_cap: float = PSNR_CAP) -> dict[str, jax.Array]:
    """{name: (N,) values} of the per-image metrics `names`, in one compiled call."""
    settings = {"cap": psnr_cap}
    return {name: METRICS[name].per_image(prediction, target,
                                          **{k: settings[k] for k in METRICS[name].settings})
            for name in names}
