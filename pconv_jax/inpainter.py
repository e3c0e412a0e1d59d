"""What every way to inpaint is: an `Inpainter`, a callable on batches.

    composites = inpainter(images, masks)

images (N, H, W, 3) float in [0, 1] (uint8 photos go through `data.images.to_float` first),
masks (N, H, W, 1) float, 1 = valid (known) pixel, 0 = hole; returns float32 composites
(N, H, W, 3) in [0, 1] whose known pixels are the input's. Any H and W: an inpainter that needs
other sides pads and crops back itself. The network (`inference.model_inpainter`), PatchMatch
and OpenCV's methods (`evaluation.baselines`) are inpainters; `evaluation.table1` evaluates any
inpainter, and `inference.methods` is the registry of them by name.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Inpainter(Protocol):
    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray: ...
