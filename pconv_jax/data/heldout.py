"""The held-out images that evaluation and the training loop's held-out batch use.

Which images a source holds out is the source's (`sources.DataSource.heldout_images`: Places365's
validation split, CelebA-HQ's last `heldout_count` train examples, a folder's held-out files, grid
crops of the demo's held-out photographs); here they are centre-cropped to one side and counted.
Every process gets the same images.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from pconv_jax.data import crops, sources


def eval_image_size(config: ml_collections.ConfigDict) -> int:
    """The side of every evaluation image: `config.eval.image_size`, or the training size."""
    return int(config.eval.image_size or config.data.image_size)


def load_eval_images(data: ml_collections.ConfigDict, count: int, size: int, *,
                     count_setting: str = "config.eval.num_images") -> np.ndarray:
    """The first `count` held-out images, centre-cropped: float32 [0, 1], (count, S, S, 3).

    Args:
      data: `config.data` (the source, `resize_mode` and the source's own settings).
      count: number of images (e.g. `config.eval.num_images`).
      size: side length S (`eval_image_size(config)`).
      count_setting: the setting `count` comes from, named when too few images are held out.
    """
    count, size = int(count), int(size)
    mode = crops.check_mode(data.resize_mode)
    source = sources.get(data.name)
    images = source.heldout_images(data, count, size)
    if len(images) < count:
        more = f" ({source.heldout_settings})" if source.heldout_settings else ""
        raise ValueError(f"{data.name} holds only {len(images)} held-out images of size {size}, "
                         f"{count} were asked for; lower {count_setting} or hold out more "
                         f"images{more}.")
    return np.stack([crops.centre_crop(image, size, mode).astype(np.float32) / 255.0
                     for image in images[:count]])
