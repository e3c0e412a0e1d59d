"""Fréchet Inception Distance and Inception Score from Inception-v3 features.

- `make_inception_fn(params)`: a jitted `images (N, H, W, 3) in [0, 1] -> (pool (N, 2048),
  logits (N, 1008))` as NumPy float32, to call per batch; concatenate the batches and hand them to
  the formulas, which accumulate in float64.
- FID (Heusel et al. 2017), as pytorch-fid computes it: with mu, S the mean and covariance
  (N - 1 denominator) of each set's pool features,
  `FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))`. Lower is better.
- IS (Salimans et al. 2016), as the original `inception_score.py` (openai/improved-gan): the
  images are cut into `splits` consecutive parts; per part, `exp(mean_x KL(p(y|x) || p(y)))`
  with p(y|x) the softmax of the UNBIASED logits and p(y) its mean over the part; the result is
  the mean and (population) standard deviation over the parts. Higher is better; it lies
  between 1 and the number of classes.

Sample size: FID is biased upwards for small N (its expected value falls as N grows, and the
covariance of 2048-d features is singular below 2,049 images), so FID values are comparable only
at equal N, and need thousands of images to mean much. Report FID over all masks, and per table
cell only for cells with at least `table1.MIN_SET_METRIC_MASKS` (1,000) images. IS is usually
reported with 10 splits over 5,000 or more images.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from scipy import linalg
from scipy.special import log_softmax, logsumexp

from pconv_jax.network.inception import InceptionParams, network, resize_and_scale

SQRTM_EPS = 1e-6  # added to both covariances' diagonals when their product is singular
IMAGINARY_TOLERANCE = 1e-3  # larger imaginary parts on sqrtm's diagonal are an error


def make_inception_fn(
        params: InceptionParams) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A callable `images (N, H, W, 3) float in [0, 1] -> (pool (N, 2048), logits (N, 1008))`,
    both NumPy float32 (see `pconv_jax.network.inception.inception_features`).

    The resize is compiled per input size and the network once per batch size (every input is
    299x299 by then), so batches of several image sizes share one compiled network.
    """
    resize = jax.jit(resize_and_scale)
    forward = jax.jit(network)

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pool, logits = forward(params, resize(images))
        return np.asarray(pool, np.float32), np.asarray(logits, np.float32)

    return features


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"frechet_distance: {name} must be (N, D) features of N >= 2 images; "
                         f"got shape {features.shape}.")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"frechet_distance: {name} holds non-finite values.")
    return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of Inception pool features, (N_a, D) and (N_b, D).

    pytorch-fid's `calculate_frechet_distance` on `np.mean(axis=0)` and `np.cov(rowvar=False)`
    of each set: when `sqrtm(S_a S_b)` is not finite (a singular product) it is recomputed with
    `SQRTM_EPS` added to both diagonals; imaginary parts (numerical error) are dropped, unless
    one on the diagonal exceeds `IMAGINARY_TOLERANCE` (a ValueError).
    """
    a = _check_features("features_a", features_a)
    b = _check_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature sizes differ ({a.shape[1]} and "
                         f"{b.shape[1]}).")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.all(np.isfinite(covmean)):
        logging.warning("FID: the covariances' product is singular; adding %g to their "
                        "diagonals.", SQRTM_EPS)
        offset = np.eye(sigma_a.shape[0]) * SQRTM_EPS
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise ValueError("FID: sqrtm(S_a S_b) has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the features are degenerate "
                             "(too few or identical images?).")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over `splits` consecutive parts) of (N, classes) unbiased
    logits (`inception_features`' second output), computed in float64.

    Part i holds rows [i N // splits, (i + 1) N // splits), as in the original. Probabilities
    are handled as logarithms (log-softmax, log-mean-exp), so that one that underflows to 0
    contributes 0 instead of the original's NaN.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"inception_score: expected (N, classes) logits with N >= splits = "
                         f"{splits} >= 1; got shape {logits.shape}.")
    if not np.all(np.isfinite(logits)):
        raise ValueError("inception_score: the logits hold non-finite values.")
    log_p = log_softmax(logits, axis=1)
    n = logits.shape[0]
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = logsumexp(part, axis=0) - np.log(len(part))
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
