"""Metrics against scikit-image and NumPy float64 references written from the formulas."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from pconv_jax.evaluation import metrics


def _pair(seed=0, shape=(3, 24, 20, 3)):
    rng = np.random.default_rng(seed)
    a = rng.uniform(size=shape).astype(np.float32)
    noise = rng.normal(scale=0.1, size=shape)
    b = np.clip(a + noise, 0, 1).astype(np.float32)
    return a, b


def test_l1_and_psnr_match_numpy_float64():
    a, b = _pair()
    d = a.astype(np.float64) - b.astype(np.float64)
    want_l1 = 100 * np.abs(d).mean(axis=(1, 2, 3))
    want_psnr = 10 * np.log10(1.0 / (d**2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(metrics.l1_percent(a, b), want_l1, rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(a, b), want_psnr, rtol=1e-5)


def test_ssim_matches_scikit_image():
    a, b = _pair(1)
    want = [structural_similarity(x.astype(np.float64), y.astype(np.float64), channel_axis=-1,
                                  gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=1.0) for x, y in zip(a, b)]
    got = metrics.ssim(a, b)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(np.asarray(got) < 0.99)  # the noise is visible: not trivially 1


def test_ssim_on_smooth_images_matches_scikit_image():
    y, x = np.mgrid[0:32, 0:32] / 31.0
    a = np.stack([x, y, x * y], -1)[None].astype(np.float32)
    b = np.clip(a + 0.05 * np.sin(9 * x)[None, ..., None], 0, 1).astype(np.float32)
    want = structural_similarity(a[0].astype(np.float64), b[0].astype(np.float64),
                                 channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)
    np.testing.assert_allclose(metrics.ssim(a, b), [want], atol=2e-5)


def test_identical_images_give_ssim_one_and_the_psnr_cap():
    a, _ = _pair(2)
    result = metrics.image_metrics(a, a)
    np.testing.assert_allclose(result["ssim"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(result["psnr"], metrics.PSNR_CAP)
    np.testing.assert_array_equal(result["l1"], 0.0)


def test_gaussian_window_matches_scipy_taps():
    # scipy's gaussian_filter with sigma 1.5, truncate 3.5: radius 5, normalised taps.
    x = np.arange(-5, 6)
    want = np.exp(-x**2 / (2 * 1.5**2))
    np.testing.assert_allclose(metrics.gaussian_window(), want / want.sum(), rtol=1e-6)


def test_bad_shapes_are_a_clear_error():
    a, b = _pair()
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(a, b[:, :-1])
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[:, :8, :8], b[:, :8, :8])
