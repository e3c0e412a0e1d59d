"""The partial convolution as a pure function (Liu et al., ECCV 2018, Eq. 1 of arXiv v2).

For each output location, with X the input window, M its mask window and W, b the kernel and bias:

    S  = sum(M)                        over the kh x kw window and all C_in input channels
    m' = 1 if S > 0 else 0             the updated mask
    y  = W^T (X * M) * (C_in*kh*kw) / S + b   where m' = 1
    y  = 0                                    where m' = 0 (the bias too)

The mask path is cheap: a mask is reduced over channels to a per-pixel *count* of valid
channels, then one windowed sum over that single channel (a 1 -> 1 convolution with a ones
kernel) gives S, so its cost does not grow with C_in or C_out. Because convolution is linear
this stays exact for per-channel masks and for concatenations of feature groups that each
carry their own mask (a UNet decoder's skips).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
Padding = int | Sequence[tuple[int, int]] | None
IntPair = int | Sequence[int]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def symmetric_padding(kernel_size: IntPair, dilation: IntPair = 1) -> tuple[tuple[int, int], ...]:
    """`dilation*(k-1)//2` on both sides of each spatial axis (never XLA's asymmetric 'SAME')."""
    kh, kw = _pair(kernel_size, "kernel_size")
    dh, dw = _pair(dilation, "dilation")
    ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    return ((ph, ph), (pw, pw))


def _resolve_padding(padding: Padding, kernel_size, dilation) -> tuple[tuple[int, int], ...]:
    if padding is None:
        return symmetric_padding(kernel_size, dilation)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(
            f"padding must be None, an int or ((top, bottom), (left, right)), got {padding!r}")
    return pads


def _as_groups(x, mask) -> tuple[list[Array], list[Array]]:
    """Normalises (array, array) or (sequence, sequence) to two equal-length lists."""
    if isinstance(x, (list, tuple)):
        if not isinstance(mask, (list, tuple)) or len(mask) != len(x):
            raise ValueError(
                "when x is a sequence of feature groups, mask must be a sequence of the same "
                f"length (one mask per group); got {len(x)} groups and mask {type(mask).__name__}")
        return list(x), list(mask)
    return [x], [mask]


def _valid_count(xs: list[Array], masks: list[Array]) -> Array:
    """Per-pixel number of valid input channels, (N, H, W, 1), summed over all groups."""
    count = None
    for x, m in zip(xs, masks):
        if m.ndim != x.ndim or m.shape[:-1] != x.shape[:-1] or m.shape[-1] not in (1, x.shape[-1]):
            raise ValueError(
                f"mask shape {m.shape} does not fit features of shape {x.shape}: expected "
                f"{x.shape[:-1] + (1,)} (shared over channels) or {x.shape} (per channel)")
        m = m.astype(jnp.float32)
        # A shared mask stands for x.shape[-1] identical channels.
        c = m * x.shape[-1] if m.shape[-1] == 1 else jnp.sum(m, axis=-1, keepdims=True)
        count = c if count is None else count + c
    return count


def _window_sum(count: Array, window, strides, pads, dilations) -> Array:
    """Sum of (N, H, W, 1) `count` over each (dilated, strided, zero-padded) window."""
    for axis in (1, 2):
        dims, step, dil = [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]
        dims[axis], step[axis], dil[axis] = window[axis - 1], strides[axis - 1], dilations[axis - 1]
        pad = [(0, 0)] * 4
        pad[axis] = pads[axis - 1]
        count = jax.lax.reduce_window(count, 0.0, jax.lax.add, tuple(dims), tuple(step),
                                      tuple(pad), window_dilation=tuple(dil))
    return count


def partial_conv(
    x: Array | Sequence[Array],
    mask: Array | Sequence[Array],
    kernel: Array,
    bias: Array | None = None,
    *,
    stride: IntPair = 1,
    padding: Padding = None,
    dilation: IntPair = 1,
) -> tuple[Array, Array]:
    """Partial convolution of `x` under `mask`; returns `(y, new_mask)`.

    Args:
      x: features (N, H, W, C_in), or a sequence of feature groups (N, H, W, C_g) that are
        concatenated along channels in order (sum of C_g = C_in). Groups let a UNet decoder pass
        `[upsampled, skip]` with their own masks without building a C_in-channel mask.
      mask: 1 = valid, 0 = hole. (N, H, W, 1) shared over channels or (N, H, W, C_in) per channel;
        for grouped `x`, a sequence with one such mask per group. Values are used as given (pass
        a binary mask). No gradient flows through the mask.
      kernel: (kh, kw, C_in, C_out), HWIO.
      bias: (C_out,) or None.
      stride, dilation: int or (h, w).
      padding: None for symmetric `dilation*(k-1)//2`; an int; or ((top, bottom), (left, right)).
        Padded pixels count as holes.

    Returns:
      y: (N, H', W', C_out) in the dtype of `x`; zero (bias included) where the window holds no
        valid pixel. new_mask: (N, H', W', 1) float32, 1 where the window held a valid pixel.

    A pure function of arrays: works under jit, grad, vmap, jax.checkpoint and sharding.
    """
    xs, masks = _as_groups(x, mask)
    kh, kw, c_in, _ = kernel.shape
    if sum(g.shape[-1] for g in xs) != c_in:
        raise ValueError(
            f"kernel expects {c_in} input channels but the features have "
            f"{[g.shape[-1] for g in xs]} channels")
    strides = _pair(stride, "stride")
    dilations = _pair(dilation, "dilation")
    pads = _resolve_padding(padding, (kh, kw), dilations)
    masks = [jax.lax.stop_gradient(m) for m in masks]

    count = _valid_count(xs, masks)  # validates the mask shapes first

    # Image path: one C_in -> C_out convolution of the masked features.
    masked = [g * m.astype(g.dtype) for g, m in zip(xs, masks)]
    masked = masked[0] if len(masked) == 1 else jnp.concatenate(masked, axis=-1)
    raw = jax.lax.conv_general_dilated(
        masked, kernel.astype(masked.dtype), window_strides=strides, padding=pads,
        rhs_dilation=dilations, dimension_numbers=_DIMENSION_NUMBERS)

    # Mask path: the window sum of the valid-channel count, in float32 (exact integers). This is
    # a 1 -> 1 convolution with a ones kernel, written as two separable windowed sums (rows,
    # then columns): XLA runs that far faster than a single-channel convolution.
    window_sum = _window_sum(count, (kh, kw), strides, pads, dilations)
    new_mask = (window_sum > 0.5).astype(jnp.float32)

    # Rescale in at least float32 (bfloat16 features would round the ratio; float64 features
    # get a float64 ratio). The ratio is 0 where the window is all hole, so only the bias needs
    # the new mask there.
    acc = jnp.promote_types(raw.dtype, jnp.float32)
    ratio = jnp.where(new_mask > 0, (c_in * kh * kw) / jnp.maximum(window_sum.astype(acc), 1.0),
                      0.0)
    y = raw.astype(acc) * ratio
    if bias is not None:
        y = y + bias.astype(acc) * new_mask.astype(acc)
    return y.astype(raw.dtype), new_mask


def plain_conv(
    x: Array,
    kernel: Array,
    bias: Array | None = None,
    *,
    stride: IntPair = 1,
    padding: Padding = None,
    dilation: IntPair = 1,
) -> Array:
    """An ordinary convolution with the same shape conventions as `partial_conv` (the paper's
    "Conv" baseline layer). Holes are expected to be filled before the first layer."""
    kh, kw = kernel.shape[:2]
    dilations = _pair(dilation, "dilation")
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=_pair(stride, "stride"),
        padding=_resolve_padding(padding, (kh, kw), dilations), rhs_dilation=dilations,
        dimension_numbers=_DIMENSION_NUMBERS)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
