"""The inpainting loss of Liu et al. (2018), paper v2:

    L = L_valid + 6 L_hole + 0.05 L_perc + 120 (L_style_out + L_style_comp) + 0.1 L_tv

Every L1 term is a mean over elements. Perceptual and style terms use VGG16 pool1..pool3
(`pconv_jax.network.vgg16`); the total-variation term is restricted to the 1-pixel dilation
of the holes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections

from pconv_jax.network.unet import MASK_THRESHOLD
from pconv_jax.network.vgg16 import VGGParams, vgg16_features
from pconv_jax.weights.vgg16_files import WEIGHTS_HELP, load_vgg16

TERMS = ("valid", "hole", "perceptual", "style_out", "style_comp", "tv")
DEFAULT_WEIGHTS = {"valid": 1.0, "hole": 6.0, "perceptual": 0.05, "style_out": 120.0,
                   "style_comp": 120.0, "tv": 0.1}


def vgg_for_config(config: ml_collections.ConfigDict) -> VGGParams | None:
    """Loads the VGG16 that `config.loss` needs: None when the perceptual and both style
    weights are 0, else the weights in `config.vgg_weights` (an error if none is named)."""
    w = _resolve_weights(config.weights)
    if max(w["perceptual"], w["style_out"], w["style_comp"]) == 0:
        return None
    if not config.vgg_weights:
        raise ValueError(
            "The perceptual and style losses need VGG16 weights but `config.loss.vgg_weights` is "
            f"empty. {WEIGHTS_HELP} Or set the perceptual and style weights to 0."
        )
    return load_vgg16(config.vgg_weights)


def _resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    resolved = dict(DEFAULT_WEIGHTS)
    if weights is not None:
        unknown = set(weights.keys()) - set(TERMS)
        if unknown:
            raise ValueError(f"Unknown loss weight(s) {sorted(unknown)}; the terms are {TERMS}.")
        # float() also rejects traced values: the weights must be static Python numbers.
        resolved.update({k: float(v) for k, v in weights.items()})
    return resolved


def gram_matrix(features: jax.Array) -> jax.Array:
    """Per-image Gram matrix psi^T psi / (C H W) of NHWC features, (N, C, C) float32.

    bfloat16-safe: each factor is scaled by 1/sqrt(C H W) before the product (no overflow
    of large sums) and the matmul accumulates in float32.
    """
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c)
    flat = flat * jnp.asarray(1.0 / math.sqrt(c * h * w), flat.dtype)
    return jnp.einsum("npc,npd->ncd", flat, flat, preferred_element_type=jnp.float32)


def hole_dilation(mask: jax.Array) -> jax.Array:
    """1 where a pixel is a hole or touches one (3x3 neighbourhood), else 0. mask: 1 = valid."""
    holes = 1.0 - mask.astype(jnp.float32)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))  # explicit: outside the image is not a hole here
    return jax.lax.reduce_window(holes, 0.0, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), pad)


def total_variation_in_holes(composite: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of |differences| of horizontally and vertically neighbouring pixels of the
    composite, counted only where both pixels lie in the 1-pixel dilation of the holes,
    divided by the composite's element count N*H*W*C."""
    region = hole_dilation(mask)
    x = composite.astype(jnp.float32)
    dx = jnp.abs(x[:, :, 1:] - x[:, :, :-1]) * (region[:, :, 1:] * region[:, :, :-1])
    dy = jnp.abs(x[:, 1:] - x[:, :-1]) * (region[:, 1:] * region[:, :-1])
    return (jnp.sum(dx) + jnp.sum(dy)) / x.size


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def _check_shapes(output: jax.Array, target: jax.Array, mask: jax.Array) -> None:
    if output.shape != target.shape or output.ndim != 4:
        raise ValueError("output and target must be NHWC of the same shape; "
                         f"got {output.shape} and {target.shape}.")
    if (mask.ndim != 4 or mask.shape[:3] != output.shape[:3]
            or mask.shape[3] not in (1, output.shape[3])):
        raise ValueError(
            f"mask must be (N, H, W, 1) or (N, H, W, C) matching the images {output.shape}; "
            f"got {mask.shape}."
        )


def inpainting_loss(
    output: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    vgg: VGGParams | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The paper's total loss and its unweighted terms.

    Args:
      output: the network's prediction I_out, (N, H, W, 3) in [0, 1].
      target: the ground truth I_gt, same shape.
      mask: 1 = valid pixel, 0 = hole; (N, H, W, 1) or (N, H, W, C). Values above
        `MASK_THRESHOLD` (0.5) count as valid, as in the network.
      vgg: frozen VGG16 weights (`pconv_jax.weights.vgg16_files.load_vgg16`); needed when the
        perceptual or a style weight is > 0. With those weights all 0 the VGG is not run.
      weights: term weights (keys of `TERMS`, missing ones default to the paper's
        1, 6, 0.05, 120, 120, 0.1); static Python numbers, e.g. `config.loss.weights`.

    Returns:
      (total, terms): total = sum of weight * term; terms maps each name in `TERMS` to
      its unweighted float32 scalar value.
    """
    _check_shapes(output, target, mask)
    w = _resolve_weights(weights)
    use_vgg = max(w["perceptual"], w["style_out"], w["style_comp"]) > 0
    if use_vgg and vgg is None:
        raise ValueError(
            "The perceptual and style losses need VGG16 weights: set `config.loss.vgg_weights` "
            "to a weights file (README: 'The loss and its VGG16 weights'), or set the perceptual "
            "and style weights to 0."
        )
    m = (mask > MASK_THRESHOLD).astype(jnp.float32)  # binarised exactly as the network does
    out, gt = output.astype(jnp.float32), target.astype(jnp.float32)
    composite = m * gt + (1.0 - m) * out

    terms = {
        "valid": jnp.mean(jnp.abs(m * (out - gt))),  # m broadcasts: a mean over N*H*W*C
        "hole": jnp.mean(jnp.abs((1.0 - m) * (out - gt))),
        "tv": total_variation_in_holes(composite, m),
    }
    zero = jnp.zeros((), jnp.float32)
    if use_vgg:
        dtype = output.dtype  # VGG runs in the output's dtype (e.g. bfloat16)
        # One pass per image set, gt without gradient. Never concatenate them along the batch:
        # with the batch sharded over devices, the joined batch is laid out differently from its
        # parts and XLA ships VGG feature maps between devices, forward and backward.
        pools_out = vgg16_features(vgg, out.astype(dtype))
        pools_comp = vgg16_features(vgg, composite.astype(dtype))
        pools_gt = vgg16_features(vgg, jax.lax.stop_gradient(gt.astype(dtype)))
        pools = list(zip(pools_out, pools_comp, pools_gt))
        terms["perceptual"] = sum(_l1(p_out, p_gt) + _l1(p_comp, p_gt)
                                  for p_out, p_comp, p_gt in pools)
        grams = [(gram_matrix(p_out), gram_matrix(p_comp), gram_matrix(p_gt))
                 for p_out, p_comp, p_gt in pools]
        terms["style_out"] = sum(_l1(g_out, g_gt) for g_out, _, g_gt in grams)
        terms["style_comp"] = sum(_l1(g_comp, g_gt) for _, g_comp, g_gt in grams)
    else:
        terms.update(perceptual=zero, style_out=zero, style_comp=zero)

    terms = {k: terms[k] for k in TERMS}
    total = sum(w[k] * terms[k] for k in TERMS if w[k] != 0.0)
    return jnp.asarray(total, jnp.float32), terms
