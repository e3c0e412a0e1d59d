"""Image crops at a side `size`: random ones for training, the centre one for evaluation.

`mode` is `config.data.resize_mode`: 'crop' keeps the native resolution (an image smaller than
the crop is scaled up), 'resize' first scales the shorter side to `size`. Crops are uint8 and,
where no scaling is needed, views of the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

MODES = ("crop", "resize")


def check_mode(mode: str) -> str:
    """`mode`, if it is one of `MODES`; else a ValueError naming the setting."""
    if mode not in MODES:
        raise ValueError(f"config.data.resize_mode must be 'crop' or 'resize', got {mode!r}.")
    return mode


# A scaled image of up to this many crops' pixels is made whole (area averaging when shrinking,
# bilinear when enlarging); of a larger enlargement (a thin strip: 1x20000 at 256 would take
# 4.7 GB) only the crop is computed, so memory per example stays bounded by the crop size.
_WHOLE_SCALE_CROPS = 16


def scaled_shape(shape: Sequence[int], size: int, mode: str) -> tuple[int, int, float]:
    """(height, width, scale) of an image scaled so that its shorter side is >= size ('crop')
    or == size ('resize')."""
    h, w = shape[:2]
    scale = size / min(h, w)
    if mode == "crop":
        scale = max(scale, 1.0)
    return max(math.ceil(h * scale), size), max(math.ceil(w * scale), size), scale


def scaled_crop(image: np.ndarray, size: int, mode: str, top: int, left: int) -> np.ndarray:
    """The size×size window at (top, left) of a uint8 image scaled by `scaled_shape`; a view
    when no scaling is needed."""
    h, w = image.shape[:2]
    new_h, new_w, scale = scaled_shape(image.shape, size, mode)
    if (new_h, new_w) == (h, w):
        return image[top:top + size, left:left + size]
    if new_h * new_w <= max(h * w, _WHOLE_SCALE_CROPS * size * size):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        return image[top:top + size, left:left + size]
    return _enlarged_window(image, (new_h, new_w), top, left, size)


def _enlarged_window(image: np.ndarray, scaled: tuple[int, int], top: int, left: int,
                     size: int) -> np.ndarray:
    """The size×size window at (top, left) of `image` enlarged bilinearly to `scaled`, with the
    sampling positions and edge handling of `cv2.resize`, computed from the source pixels it
    needs only."""
    h, w = image.shape[:2]
    step_y, step_x = h / scaled[0], w / scaled[1]  # source pixels per scaled pixel (<= 1)
    y, x = (top + 0.5) * step_y - 0.5, (left + 0.5) * step_x - 0.5  # source of pixel (0, 0)
    # The source rows and columns the window reads (remap also needs them below 32767).
    y0, x0 = max(0, math.floor(y)), max(0, math.floor(x))
    y1 = min(h, math.floor(y + (size - 1) * step_y) + 2)
    x1 = min(w, math.floor(x + (size - 1) * step_x) + 2)
    to_source = np.array([[step_x, 0.0, x - x0], [0.0, step_y, y - y0]])
    return cv2.warpAffine(image[y0:y1, x0:x1], to_source, (size, size),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def random_crop(image: np.ndarray, rng: np.random.Generator, size: int, mode: str
                ) -> np.ndarray:
    """Random crop and horizontal flip: uint8 (H, W, 3) -> uint8 (S, S, 3).

    A view of the image or of its scaled copy: stacking the batch is the only copy.
    """
    h, w, _ = scaled_shape(image.shape, size, mode)
    top, left, flip = rng.integers(0, [h - size + 1, w - size + 1, 2])
    crop = scaled_crop(image, size, mode, top, left)
    return crop[:, ::-1] if flip else crop


def centre_crop(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """The centre crop: uint8 (H, W, 3) -> uint8 (S, S, 3)."""
    h, w, _ = scaled_shape(image.shape, size, mode)
    return scaled_crop(image, size, mode, (h - size) // 2, (w - size) // 2)
