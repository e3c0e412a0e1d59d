"""Input-pipeline test helpers: small configs, folders of one-grey-level images, batch equality."""

import cv2
import numpy as np

from pconv_jax.data import heldout
from pconv_jax.data import pipeline as data
from tests.helpers.training import default_config


def data_config(name="demo", size=32, batch=4, **data_overrides):
    config = default_config()
    config.data.name = name
    config.data.image_size = size
    config.data.batch_size = batch
    config.data.workers = 2
    config.data.update(data_overrides)
    return config


def eval_images(config, count):
    """The first `count` held-out images at the evaluation size, as evaluation reads them."""
    return heldout.load_eval_images(config.data, count, heldout.eval_image_size(config))


def check_batch(batch, batch_size, size, holes=True):
    assert set(batch) == {"image", "mask"}
    image, mask = batch["image"], batch["mask"]
    assert image.shape == (batch_size, size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (batch_size, size, size, 1) and mask.dtype == np.uint8
    assert image.std() > 2
    assert set(np.unique(mask)) <= {0, 1}
    if holes:  # generated masks hold at least 1% holes
        assert ((mask == 0).mean(axis=(1, 2, 3)) > 0.01).all()


def solid_folder(root, levels):
    """Images of one grey level each (any crop or flip keeps the level: it names the image)."""
    for i, level in enumerate(levels):
        sub = root / f"d{i % 2}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:03d}.png"), np.full((40, 50, 3), level, np.uint8))
    return str(root)


def grey_levels(batch):
    return {int(v) for v in batch["image"][:, 0, 0, 0]}


def equal_batches(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    return all(np.array_equal(a[k], b[k]) for a, b in zip(batches_a, batches_b) for k in a)


def make_pipeline(config, seed=0, index=0, count=1):
    return data.create_train_pipeline(config, seed=seed, process_index=index,
                                      process_count=count)


def wrap_train_pipeline(monkeypatch, on_batch) -> None:
    """Makes `pipeline.create_train_pipeline` give its pipeline with `on_batch(count, batch)`
    applied to each batch (count from 1); state and close pass through."""
    create = data.create_train_pipeline

    class Wrapped:
        def __init__(self, inner):
            self.inner, self.count = inner, 0

        def __next__(self):
            self.count += 1
            return on_batch(self.count, next(self.inner))

        def get_state(self):
            return self.inner.get_state()

        def set_state(self, state):
            self.inner.set_state(state)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(data, "create_train_pipeline", lambda *a, **k: Wrapped(create(*a, **k)))
