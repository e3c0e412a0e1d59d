"""The paper's Table 1 protocol: metrics on the composite per hole-ratio bin x {N, B}."""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    """`config.eval`: which test masks, how many held-out images, which method."""
    return ml_collections.ConfigDict(dict(
        test_masks="",       # directory of a test mask set in the NVIDIA test convention
                             # (white = hole, blocks of 2K per bin, first K of a block N);
                             # '' = generate our own 6x2 set into <workdir>/test_masks
        masks_per_cell=8,    # K: masks per (bin, N/B) cell when generating our own set
        num_images=48,       # held-out images; mask j is paired with image j mod num_images
        batch_size=8,
        method="model",      # 'model' | 'telea' | 'ns' (OpenCV's classical inpainting)
        inpaint_radius=3,    # OpenCV inpaint radius for 'telea' and 'ns'
        checkpoint_step=-1,  # -1 = the latest checkpoint
        psnr_cap=100.0,      # PSNR (dB) reported for identical images (MSE = 0)
    ))
