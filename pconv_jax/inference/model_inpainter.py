"""The network as an `Inpainter`: any image size, and holes beyond its reach filled too.

Any image size: the network needs sides that are multiples of 2**depth, so the image *and its
mask* are mirror-padded (symmetric) up to a padded side and the result is cropped back. A padded
pixel is thus valid exactly where the pixel it mirrors is valid, so the network sees plausible
context at the border and never has to invent the padding. The output is the composite: the
known pixels are the input's, the holes the network's.

Padded sides: the next multiple of 2**depth (`round_up`, what the evaluation uses), or one of a
few buckets (`bucket_side`, what the app and `inpaint.py` use): photos and crops of similar sizes
then reuse one compiled network instead of compiling anew.

Holes beyond the network's reach: a hole pixel farther from every known pixel than the
network's receptive field gets no value from the network (its final mask is 0, its output
exactly 0: black). Such pixels are filled from the same network run on copies halved until
every pixel is reached (a half-size pixel is known if any of its 2x2 pixels is, with their
mean), upsampled nearest-neighbour; only the unreached pixels take these values, and a warning
gives their share of the hole pixels (the photo's own: padding is not counted).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.inpainter import Inpainter
from pconv_jax.network.unet import composite

# Padded sides of `bucket_side` (each rounded up to the network's size multiple); a larger side
# is rounded up to a multiple of 256. Few sides = few compilations.
BUCKET_SIDES = (64, 128, 256, 384, 512, 768, 1024)


def round_up(side: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `side`."""
    return -(-side // multiple) * multiple


def pad_to_size(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-pads image and mask (bottom and right) to `size` (H, W).

    Single (H, W, C) arrays or batches (N, H, W, C).
    """
    h, w = image.shape[-3:-1]
    pad = ((0, 0),) * (image.ndim - 3) + ((0, size[0] - h), (0, size[1] - w), (0, 0))
    # 'symmetric' repeats the edge pixel and, unlike 'reflect', works for 1-pixel-wide images.
    return np.pad(image, pad, mode="symmetric"), np.pad(mask, pad, mode="symmetric")


def bucket_side(side: int, multiple: int) -> int:
    """The padded side for an image side: the first bucket that holds it."""
    for bucket in BUCKET_SIDES:
        if side <= round_up(bucket, multiple):
            return round_up(bucket, multiple)
    return round_up(side, max(256, multiple))


def inpaint_image(fill: Inpainter, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Composite (H, W, 3) of one image (H, W, 3) and its mask (H, W, 1), 1 = valid, filled by
    the inpainter `fill`; known pixels exactly as given."""
    result = np.asarray(fill(image[None], mask[None]))[0]
    return np.where(mask > MASK_THRESHOLD, image, result)


PadSide = Callable[[int, int], int]  # (side, multiple) -> padded side, a multiple of `multiple`


class ModelInpainter:
    """The network as an inpainter: composites (N, H, W, 3) in [0, 1], any H and W.

    Images (N, H, W, 3) in [0, 1] and masks (N, H, W, 1), 1 = valid, are mirror-padded to
    sides `pad_side(side, 2**depth)` (default: the next multiple of 2**depth). Hole pixels the
    network does not reach (final mask 0) are filled from the network run on halved copies,
    recursively, upsampled nearest-neighbour. `hole_pixels` and `unreached_pixels` count over
    all calls, the given pixels only (not the padding); with `warn`, each call that filled
    unreached pixels says so with their share.
    """

    def __init__(self, model: nnx.Module, *, warn: bool = True, pad_side: PadSide = round_up):
        model.eval()
        graphdef, state = nnx.split(model)
        self.multiple = 2**model.depth
        self.pad_side = pad_side
        self.warn = warn
        self.hole_pixels = 0
        self.unreached_pixels = 0

        @jax.jit
        def run(state, images, masks):
            net = nnx.merge(graphdef, state)
            output, final_mask = net(images, masks, return_mask=True)
            return jnp.clip(composite(output, images, masks), 0.0, 1.0), final_mask

        self._run = lambda images, masks: run(state, images, masks)

    @property
    def unreached_share(self) -> float:
        """Unreached hole pixels / hole pixels, over all calls so far."""
        return self.unreached_pixels / max(self.hole_pixels, 1)

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        valid = np.all(np.asarray(masks) > MASK_THRESHOLD, axis=-1, keepdims=True)
        empty = np.flatnonzero(~valid.any(axis=(1, 2, 3)))
        if empty.size:
            raise ValueError(f"mask {int(empty[0])} of the batch marks every pixel as a hole: "
                             f"there are no known pixels to inpaint from")
        result, unreached = self._fill(images, valid)
        holes = int((~valid).sum())
        self.hole_pixels += holes
        self.unreached_pixels += unreached
        if unreached and self.warn:
            warnings.warn(f"{unreached / holes:.1%} of the hole pixels ({unreached} px) lie "
                          f"beyond the network's reach; filled from downscaled copies",
                          stacklevel=2)
        return result

    def _fill(self, images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
        """(composites, count of unreached pixels) of images and boolean masks (True = valid)."""
        h, w = images.shape[1:3]
        size = self.pad_side(h, self.multiple), self.pad_side(w, self.multiple)
        padded_images, padded_valid = pad_to_size(images, valid.astype(np.float32), size)
        result, final_mask = self._run(padded_images, padded_valid)
        result = np.asarray(result)[:, :h, :w]
        unreached = (np.asarray(final_mask)[:, :h, :w] <= MASK_THRESHOLD) & ~valid
        count = int(unreached.sum())
        if count == 0:
            return result, 0
        if h == 1 and w == 1:  # cannot happen with a known pixel; guards the recursion
            raise RuntimeError("the network reaches no pixel even at 1x1")
        small, _ = self._fill(*_halve(images, valid))
        upsampled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)[:, :h, :w]
        return np.where(unreached, upsampled, result), count


def _halve(images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-size copies: a pixel is known if any of its 2x2 pixels is, with their mean.

    Holes stay holes (a hole block stays a hole) and hole content is never read.
    """
    n, h, w, c = images.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    images, weights = np.pad(images, pad, mode="edge"), np.pad(valid, pad, mode="edge")
    weights = weights.astype(np.float32)

    def blocks(x):
        return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3]).sum(axis=(2, 4))

    count, total = blocks(weights), blocks(images * weights)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32), count > 0
