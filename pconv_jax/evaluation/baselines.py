"""Classical (not learned) inpainting baselines: PatchMatch, OpenCV Telea and Navier-Stokes.

Each is an `Inpainter` (`pconv_jax.inpainter`), as the network is: images (N, H, W, 3) float in
[0, 1] and masks (N, H, W, 1) with 1 = valid, 0 = hole; returns the inpainted images
(N, H, W, 3) float32 in [0, 1]. `pconv_jax.inference.methods` offers them by name. The
libraries work on 8-bit pixels, so the known pixels are pasted back from the float input (the
composite) and only the holes carry the libraries' quantised values.

- 'patchmatch': Barnes et al. (SIGGRAPH 2009), the paper's "PM" row, through PyPatchMatch's
  prebuilt library (MIT licence). Patches of (2 r + 1)^2 pixels, r = `patch_radius` (3: the 7x7
  patches of the PatchMatch paper); its randomised search starts from `seed` for every image,
  so equal inputs give equal outputs. The images of a batch are filled on all usable cores.
- 'telea', 'ns': `cv2.inpaint` (fast marching; Navier-Stokes) with radius `radius`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from pconv_jax.convention import MASK_THRESHOLD

_OPENCV_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def inpaint_opencv(images: np.ndarray, masks: np.ndarray, method: str = "telea",
                   radius: int = 3) -> np.ndarray:
    """Fills the holes of each image with `cv2.inpaint` ('telea' or 'ns') and composites."""
    if method not in _OPENCV_FLAGS:
        raise ValueError(f"unknown OpenCV method {method!r}; choose one of {tuple(_OPENCV_FLAGS)}")
    flag = _OPENCV_FLAGS[method]
    return _fill_each(images, masks, lambda pixels, holes: cv2.inpaint(pixels, holes, radius, flag))


def inpaint_patchmatch(images: np.ndarray, masks: np.ndarray, patch_radius: int = 3,
                       seed: int = 0) -> np.ndarray:
    """Fills the holes of each image with PatchMatch and composites."""
    library = patchmatch_library()
    library.set_random_seed(seed)  # every inpainting starts from it: results never depend on
    # the batch or the thread (checked: threads give the sequential run's pixels)

    def fill(pixels: np.ndarray, holes: np.ndarray) -> np.ndarray:
        return library.inpaint(pixels, holes, patch_size=patch_radius)

    # The native library releases the GIL: one image per usable core (docs/evaluation.md).
    return _fill_each(images, masks, fill, threads=len(os.sched_getaffinity(0)))


def _fill_each(images: np.ndarray, masks: np.ndarray,
               fill: Callable[[np.ndarray, np.ndarray], np.ndarray],
               threads: int = 1) -> np.ndarray:
    """Runs `fill(uint8 RGB (H, W, 3), holes uint8 (H, W), non-zero = hole)` per image, on
    `threads` images at a time."""
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks, np.float32)
    if (images.ndim != 4 or images.shape[-1] != 3 or masks.ndim != 4
            or masks.shape[:3] != images.shape[:3]):
        raise ValueError(f"expected images (N, H, W, 3) and masks (N, H, W, 1) of the same size, "
                         f"got {images.shape} and {masks.shape}")
    valid = masks[..., :1] > MASK_THRESHOLD

    def one(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
        holes = np.ascontiguousarray((~keep[..., 0]).astype(np.uint8))
        filled = fill(pixels, holes).reshape(image.shape).astype(np.float32) / 255.0
        return np.where(keep, image, filled)

    if threads <= 1 or len(images) <= 1:
        return np.stack([one(image, keep) for image, keep in zip(images, valid)])
    with ThreadPoolExecutor(min(threads, len(images))) as pool:
        return np.stack(list(pool.map(one, images, valid)))


def patchmatch_library():
    """PyPatchMatch's module, or an error saying how to install it."""
    try:
        from patchmatch import patch_match
    except ImportError as e:
        raise ImportError("PatchMatch needs the PyPatchMatch package: "
                          "pip install 'PyPatchMatch>=2.2,<3'") from e
    if not patch_match.patchmatch_available:
        raise RuntimeError("PyPatchMatch is installed but its native library did not load "
                           "(see the warning above); reinstall it: "
                           "pip install --force-reinstall 'PyPatchMatch>=2.2,<3'")
    return patch_match
