"""Prepared TFDS copies of synthetic photographs, for tests and benchmarks of the TFDS path.

`write_synthetic_tfds('places365_small', data_dir, train=64)` prepares the real TFDS builder
(its features, split names, file layout and metadata) in `data_dir`, with smooth random JPEGs in
place of the downloads: what `tfds.data_source` then reads is exactly what it reads from a real
prepared copy, in ArrayRecord or (to test the conversion error) TFRecord files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from unittest import mock

import cv2
import numpy as np

from pconv_jax.data import images, sources


def _photo(rng: np.random.Generator, shape: tuple[int, int]) -> bytes:
    """A smooth photo-like JPEG (bicubic enlargement of a tiny random image)."""
    small = rng.integers(0, 255, (12, 16, 3), np.uint8)
    image = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return images.encode_image(image, ".jpg", jpeg_quality=90)


def write_synthetic_tfds(name: str, data_dir: str, *, train: int, heldout: int = 4,
                         file_format: str = "array_record", solid: bool = False, seed: int = 0):
    """Prepares TFDS dataset `name` in `data_dir` from `train` (+ `heldout` in its held-out
    split, for Places365) generated JPEGs; returns the builder.

    With `solid`, example i is one grey level, 10 * i % 250 (any crop or flip keeps it, JPEG
    within a level or two), so tests can tell which examples a pipeline read; the validation
    examples are numbered on from `train`.
    """
    import tensorflow_datasets as tfds

    source = sources.get(name)
    if not isinstance(source, sources.TfdsSource):
        raise ValueError(f"{name!r} is not a TFDS dataset.")
    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
    features = builder.info.features
    shape = features["image"].shape[:2]

    def examples(first: int, count: int) -> Iterator[tuple[str, dict]]:
        rng = np.random.default_rng([seed, first])
        for i in range(first, first + count):
            encoded = _photo(rng, shape)
            if solid:
                grey = np.full((*shape, 3), 10 * i % 250, np.uint8)
                encoded = images.encode_image(grey, ".jpg")
            example = {}
            for key, feature in features.items():
                if key == "image":
                    example[key] = io.BytesIO(encoded)  # stored as is, like the real JPEGs
                elif isinstance(feature, tfds.features.ClassLabel):
                    example[key] = 0
                else:
                    example[key] = f"{i:06d}.jpg"
            yield f"{i:06d}", example

    def split_generators(self, dl_manager):
        del self, dl_manager
        splits = {"train": examples(0, train)}
        if source.heldout_split:
            splits[source.heldout_split] = examples(train, heldout)
        return splits

    with mock.patch.object(type(builder), "_split_generators", split_generators):
        builder.download_and_prepare(file_format=file_format)
    return builder
