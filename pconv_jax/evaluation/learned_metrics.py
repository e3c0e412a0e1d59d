"""Metrics computed by pretrained networks: LPIPS per image, FID and Inception Score per set.

Each needs weight files the user names; a missing file is an error naming it and where it
comes from, never a silent random network:

- LPIPS (VGG variant, v0.1): the VGG16 backbone from `config.loss.vgg_weights` (torchvision's
  file, as for the loss), the calibration from `config.eval.lpips_weights` ('' = the file the
  `lpips` pip package ships, if installed). See `pconv_jax.evaluation.lpips`.
- FID and IS: pytorch-fid's Inception network from `config.eval.inception_weights`. See
  `pconv_jax.evaluation.fid`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from pconv_jax.evaluation import fid, lpips
from pconv_jax.weights import inception_files, vgg16_files

SET_METRICS = ("fid", "is")  # one value per set of images, not per image


@dataclasses.dataclass(frozen=True)
class LearnedMetrics:
    """The loaded networks of the requested learned metrics (None: not requested)."""
    lpips: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # -> (N,)
    inception: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    is_splits: int = 10

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict,
                    names: Sequence[str]) -> LearnedMetrics:
        """Loads the networks that `names` need (raises for a missing or bad weights file)."""
        lpips_fn = inception_fn = None
        if "lpips" in names:
            if not config.loss.vgg_weights:
                raise FileNotFoundError(
                    "LPIPS needs VGG16 weights but `config.loss.vgg_weights` is empty. "
                    + vgg16_files.WEIGHTS_HELP)
            lpips_fn = lpips.load_lpips(config.loss.vgg_weights, config.eval.lpips_weights or None)
        if any(name in names for name in SET_METRICS):
            params = inception_files.load_inception(config.eval.inception_weights)
            inception_fn = fid.make_inception_fn(params)
        return cls(lpips_fn, inception_fn, int(config.eval.is_splits))

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{'inception_pool': (N, 2048), 'inception_logits': (N, 1008)}, or {} if not needed."""
        if self.inception is None:
            return {}
        pool, logits = self.inception(images)
        return {"inception_pool": np.asarray(pool, np.float32),
                "inception_logits": np.asarray(logits, np.float32)}

    def set_scores(self, names: Sequence[str], pool: np.ndarray, logits: np.ndarray,
                   reference_pool: np.ndarray) -> dict[str, float]:
        """FID of `pool` against `reference_pool` and IS of `logits`, as requested."""
        scores = {}
        if "fid" in names:
            scores["fid"] = float(fid.frechet_distance(pool, reference_pool))
        if "is" in names:
            splits = min(self.is_splits, len(logits))  # a split needs at least one image
            scores["is"] = float(fid.inception_score(logits, splits=splits)[0])
        return scores
