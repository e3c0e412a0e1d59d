"""The inpainting loss of Liu et al. (2018), paper v2:

    L = L_valid + 6 L_hole + 0.05 L_perc + 120 (L_style_out + L_style_comp) + 0.1 L_tv

Every L1 term is a mean over elements. Perceptual and style terms use VGG16 pool1..pool3
(`pconv_jax.network.vgg16`); the total-variation term is restricted to the 1-pixel dilation
of the holes.

A loss term is one entry in one registry: a function of `LossInputs` returning a scalar.
`PAPER_TERMS` holds the paper's six, weighted by `config.loss.weights`; `extra_terms`
adds a researcher's own, each with its weight, logged like the paper's.

Dtypes: the loss computes in the output's dtype promoted to at least float32 (bfloat16
outputs give float32 terms, float64 outputs float64 terms); VGG16 runs in the output's dtype,
or in `vgg_dtype` (`config.loss.dtype`: 'bfloat16' runs its convolutions in bfloat16 while the
Gram matrices, L1 means and sums stay float32). `vgg_remat` (`config.loss.remat`) recomputes
VGG16's activations in the backward pass instead of keeping them (`jax.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from pconv_jax.configs import default
from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.network.vgg16 import VGGParams, vgg16_features
from pconv_jax.weights.vgg16_files import WEIGHTS_HELP, load_vgg16


def vgg_for_config(config: ml_collections.ConfigDict) -> VGGParams | None:
    """Loads the VGG16 that `config.loss` names in `config.vgg_weights` (an error if the
    perceptual or a style weight is > 0 and none is named); None when none is named and those
    weights are all 0. A named file is loaded even then: extra terms may read its features."""
    w = _resolve_weights(config.weights)
    if config.vgg_weights:
        return load_vgg16(config.vgg_weights)
    if max(w["perceptual"], w["style_out"], w["style_comp"]) == 0:
        return None
    raise ValueError(
        "The perceptual and style losses need VGG16 weights but `config.loss.vgg_weights` is "
        f"empty. {WEIGHTS_HELP} Or set the perceptual and style weights to 0."
    )


def gram_matrix(features: jax.Array) -> jax.Array:
    """Per-image Gram matrix psi^T psi / (C H W) of NHWC features, (N, C, C), at least float32.

    bfloat16-safe: each factor is scaled by 1/sqrt(C H W) before the product (no overflow
    of large sums) and the matmul accumulates in float32 (float64 for float64 features).
    """
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c)
    flat = flat * jnp.asarray(1.0 / math.sqrt(c * h * w), flat.dtype)
    return jnp.einsum("npc,npd->ncd", flat, flat, preferred_element_type=_at_least_f32(flat))


def hole_dilation(mask: jax.Array) -> jax.Array:
    """1 where a pixel is a hole or touches one (3x3 neighbourhood), else 0. mask: 1 = valid."""
    holes = 1.0 - mask.astype(jnp.float32)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))  # explicit: outside the image is not a hole here
    zero = jnp.zeros((), holes.dtype)  # not 0.0: a float64 init value with jax_enable_x64
    return jax.lax.reduce_window(holes, zero, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), pad)


def total_variation_in_holes(composite: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of |differences| of horizontally and vertically neighbouring pixels of the
    composite, counted only where both pixels lie in the 1-pixel dilation of the holes,
    divided by the composite's element count N*H*W*C."""
    region = hole_dilation(mask)
    x = composite.astype(_at_least_f32(composite))
    dx = jnp.abs(x[:, :, 1:] - x[:, :, :-1]) * (region[:, :, 1:] * region[:, :, :-1])
    dy = jnp.abs(x[:, 1:] - x[:, :-1]) * (region[:, 1:] * region[:, :-1])
    return (jnp.sum(dx) + jnp.sum(dy)) / x.size


def _at_least_f32(x: jax.Array) -> jnp.dtype:
    return jnp.promote_types(x.dtype, jnp.float32)


def _l1(a: jax.Array, b: jax.Array) -> jax.Array:
    dtype = jnp.promote_types(_at_least_f32(a), b.dtype)
    return jnp.mean(jnp.abs(a.astype(dtype) - b.astype(dtype)))


# ----------------------------------------------------------------------------- the terms

class VGGFeatures(NamedTuple):
    """VGG16 (pool1, pool2, pool3) of the output, the composite and the ground truth."""
    output: tuple[jax.Array, ...]
    composite: tuple[jax.Array, ...]
    target: tuple[jax.Array, ...]


@dataclasses.dataclass
class LossInputs:
    """What every loss term receives, in the loss's dtype (the output's, at least float32).

    `features` and `grams` are computed on first use and shared by all the terms of one loss
    evaluation: VGG16 runs once per image set, and only if a term reads them.
    """
    output: jax.Array     # I_out, (N, H, W, C)
    target: jax.Array     # I_gt, same shape
    mask: jax.Array       # binarised: 1 = valid, 0 = hole; (N, H, W, 1) or (N, H, W, C)
    composite: jax.Array  # I_comp = M I_gt + (1 - M) I_out
    vgg: VGGParams | None = None
    vgg_dtype: jnp.dtype = jnp.float32  # the dtype VGG16 runs in (the output's own by default)
    vgg_remat: bool = False  # recompute VGG16's activations in the backward pass

    @functools.cached_property
    def features(self) -> VGGFeatures:
        """VGG16 pool1..pool3 of output, composite and ground truth (no gradient)."""
        if self.vgg is None:
            raise ValueError(
                "A loss term reads VGG16 features but no VGG16 weights were given: pass `vgg`, "
                "or in training set `config.loss.vgg_weights` to a weights file (docs/loss.md, "
                "'Getting VGG16 weights').")
        # One pass per image set, gt without gradient. Never concatenate them along the batch:
        # with the batch sharded over devices, the joined batch is laid out differently from its
        # parts and XLA ships VGG feature maps between devices, forward and backward.
        # Remat: only the images are kept for the backward pass (the target needs none).
        extract = jax.checkpoint(vgg16_features) if self.vgg_remat else vgg16_features
        return VGGFeatures(
            extract(self.vgg, self.output.astype(self.vgg_dtype)),
            extract(self.vgg, self.composite.astype(self.vgg_dtype)),
            vgg16_features(self.vgg, jax.lax.stop_gradient(self.target.astype(self.vgg_dtype))))

    @functools.cached_property
    def grams(self) -> VGGFeatures:
        """Gram matrices of `features`, per pool."""
        return VGGFeatures(*(tuple(gram_matrix(p) for p in pools) for pools in self.features))


TermFn = Callable[[LossInputs], jax.Array]


def _perceptual(x: LossInputs) -> jax.Array:
    f = x.features
    return sum(_l1(p_out, p_gt) + _l1(p_comp, p_gt)
               for p_out, p_comp, p_gt in zip(f.output, f.composite, f.target))


# The paper's terms, in the order they are evaluated; `TERMS` names them in the paper's order.
PAPER_TERMS: dict[str, TermFn] = {
    "valid": lambda x: jnp.mean(jnp.abs(x.mask * (x.output - x.target))),  # a mean over NHWC
    "hole": lambda x: jnp.mean(jnp.abs((1.0 - x.mask) * (x.output - x.target))),
    "tv": lambda x: total_variation_in_holes(x.composite, x.mask),
    "perceptual": _perceptual,
    "style_out": lambda x: sum(_l1(g, g_gt) for g, g_gt in zip(x.grams.output, x.grams.target)),
    "style_comp": lambda x: sum(_l1(g, g_gt)
                                for g, g_gt in zip(x.grams.composite, x.grams.target)),
}
TERMS = ("valid", "hole", "perceptual", "style_out", "style_comp", "tv")
VGG_TERMS = ("perceptual", "style_out", "style_comp")
VGG_DTYPES = ("float32", "bfloat16")  # config.loss.dtype


def _resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """`weights` over the defaults of `config.loss.weights` (`pconv_jax/configs/default.py`)."""
    resolved = default.get_config().loss.weights.to_dict()
    if weights is not None:
        unknown = set(weights.keys()) - set(TERMS)
        if unknown:
            raise ValueError(f"Unknown loss weight(s) {sorted(unknown)}; the terms are {TERMS}.")
        # float() also rejects traced values: the weights must be static Python numbers.
        resolved.update({k: float(v) for k, v in weights.items()})
    return resolved


def check_extra_terms(extra_terms: Mapping[str, tuple[float, TermFn]] | None
                      ) -> dict[str, tuple[float, TermFn]]:
    """`extra_terms` as {name: (float weight, function)}; ValueError naming a bad entry."""
    checked = {}
    for name, entry in (extra_terms or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name in TERMS:
            raise ValueError(f"extra loss term {name!r}: the name must be an identifier other "
                             f"than the paper's terms {TERMS}.")
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1])):
            raise ValueError(f"extra loss term {name!r}: give (weight, function of LossInputs), "
                             f"got {entry!r}.")
        checked[name] = (float(entry[0]), entry[1])  # float(): a static Python number
    return checked


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
    extra_terms: Mapping[str, tuple[float, TermFn]] | None = None,
    *,
    vgg_dtype: str | jnp.dtype | None = None,
    vgg_remat: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The paper's total loss and its unweighted terms, plus any extra terms.

    Args:
      output: the network's prediction I_out, (N, H, W, 3) in [0, 1].
      target: the ground truth I_gt, same shape.
      mask: 1 = valid pixel, 0 = hole; (N, H, W, 1) or (N, H, W, C). Values above
        `MASK_THRESHOLD` (0.5) count as valid, as in the network.
      vgg: frozen VGG16 weights (`pconv_jax.weights.vgg16_files.load_vgg16`); needed when the
        perceptual or a style weight is > 0. With those weights all 0 the VGG is not run.
      weights: term weights (keys of `TERMS`; missing ones take the default config's
        `loss.weights`, the paper's); static Python numbers, e.g. `config.loss.weights`.
      extra_terms: {name: (weight, fn)}, each `fn(LossInputs)` a scalar added to the total
        with its static weight, e.g. {"l2": (1.0, lambda x: jnp.mean((x.output - x.target)**2))}.
      vgg_dtype: the dtype VGG16 runs in (`config.loss.dtype`); None = the output's. With
        'bfloat16' the Gram matrices, L1 means and sums stay float32 (the terms' dtype).
      vgg_remat: recompute VGG16's activations in the backward pass (`config.loss.remat`):
        less memory for a second forward pass of VGG16.

    Returns:
      (total, terms): total = sum of weight * term; terms maps each name in `TERMS`, then each
      extra term, to its unweighted scalar value (float32, or float64 for a float64 output).
    """
    _check_shapes(output, target, mask)
    w = _resolve_weights(weights)
    extra = check_extra_terms(extra_terms)
    use_vgg = max(w[k] for k in VGG_TERMS) > 0
    if use_vgg and vgg is None:
        raise ValueError(
            "The perceptual and style losses need VGG16 weights: set `config.loss.vgg_weights` "
            "to a weights file (README: 'The loss and its VGG16 weights'), or set the perceptual "
            "and style weights to 0."
        )
    dtype = _at_least_f32(output)
    m = (mask > MASK_THRESHOLD).astype(dtype)  # binarised exactly as the network does
    out, gt = output.astype(dtype), target.astype(dtype)
    vgg_dtype = output.dtype if vgg_dtype is None else jnp.dtype(vgg_dtype)
    if vgg_dtype not in VGG_DTYPES and vgg_dtype != output.dtype:
        raise ValueError(f"vgg_dtype must be one of {VGG_DTYPES} (config.loss.dtype), "
                         f"got {vgg_dtype}.")
    inputs = LossInputs(out, gt, m, m * gt + (1.0 - m) * out, vgg, vgg_dtype, bool(vgg_remat))

    zero = jnp.zeros((), dtype)
    values = {k: fn(inputs) if use_vgg or k not in VGG_TERMS else zero
              for k, fn in PAPER_TERMS.items()}
    terms = {k: values[k] for k in TERMS}
    total = sum(w[k] * terms[k] for k in TERMS if w[k] != 0.0)
    for name, (weight, fn) in extra.items():
        value = jnp.asarray(fn(inputs))
        if value.shape != ():
            raise ValueError(f"extra loss term {name!r} must return a scalar; got shape "
                             f"{value.shape}.")
        terms[name] = value
        if weight != 0.0:
            total = total + weight * value
    return jnp.asarray(total, dtype), terms
