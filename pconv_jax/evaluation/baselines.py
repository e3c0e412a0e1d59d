"""Classical inpainting baselines from OpenCV: Telea (fast marching) and Navier-Stokes.

Same interface as the network: images (N, H, W, 3) float in [0, 1] and masks (N, H, W, 1)
with 1 = valid, 0 = hole; returns the inpainted images (N, H, W, 3) float32 in [0, 1].
OpenCV works on 8-bit pixels, so the known pixels are pasted back from the float input
(the composite) and only the holes carry OpenCV's quantised values.
"""

from __future__ import annotations

import cv2
import numpy as np

from pconv_jax.network.unet import MASK_THRESHOLD

_OPENCV_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
CLASSICAL_METHODS = tuple(_OPENCV_FLAGS)  # the names `inpaint_classical` takes


def inpaint_classical(images: np.ndarray, masks: np.ndarray, method: str = "telea",
                      radius: int = 3) -> np.ndarray:
    """Fills the holes of each image with `cv2.inpaint` ('telea' or 'ns') and composites."""
    if method not in _OPENCV_FLAGS:
        raise ValueError(f"unknown classical method {method!r}; choose one of "
                         f"{CLASSICAL_METHODS}")
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[:3] != images.shape[:3]:
        raise ValueError(f"expected images (N, H, W, C) and masks (N, H, W, 1) of the same size, "
                         f"got {images.shape} and {masks.shape}")
    valid = masks[..., :1] > MASK_THRESHOLD
    out = np.empty_like(images)
    for i, (image, keep) in enumerate(zip(images, valid)):
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        holes = (~keep[..., 0]).astype(np.uint8)  # OpenCV: non-zero = to be filled
        filled = cv2.inpaint(pixels, holes, radius, _OPENCV_FLAGS[method])
        filled = filled.reshape(image.shape).astype(np.float32) / 255.0
        out[i] = np.where(keep, image, filled)
    return out
