"""Shared tiny settings for the training tests (no tests here)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from pconv_jax import config as config_lib


def shrink(config: ml_collections.ConfigDict, *, steps: int = 4, size: int = 32,
           batch: int = 8) -> ml_collections.ConfigDict:
    """A config file's config made tiny: 32x32 images, depth 3, widths 4..8, synchronous saves."""
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
    config.data.image_size = size
    config.data.batch_size = batch
    config.eval.num_images = 2
    config.data.prefetch = 1
    config.data.worker_processes = 0  # in-process: tfds.testing.mock_data does not reach workers
    config.model.depth = 3
    config.model.base_width = 4
    config.model.max_width = 8
    config.loss.vgg_weights = ""
    for term in ("perceptual", "style_out", "style_comp"):
        config.loss.weights[term] = 0.0
    config.masks.hole_ratio_min = 0.1
    config.masks.hole_ratio_max = 0.4
    # One learning rate per stage, so runs share their compiled steps (`compiled_steps`).
    config.train.learning_rate = 5e-4 if config.train.freeze_encoder_bn else 2e-3
    config.train.num_steps = steps
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.eval_every_steps = steps
    config.train.eval_batch_size = 2
    config.train.async_checkpoints = False
    return config


from tests.helpers import REPO  # noqa: E402


def load_config_file(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/<name>.py`'s get_config(arg), loaded as the commands load it (locked)."""
    return config_lib.load_config(str(REPO / "configs" / f"{name}.py") + (f":{arg}" if arg else ""))


def default_config() -> ml_collections.ConfigDict:
    """An unlocked copy of `pconv_jax/configs/default.py`: every section at its default."""
    return config_lib.default_config()


def demo_config(arg: str = "train", **kwargs) -> ml_collections.ConfigDict:
    return shrink(load_config_file("demo", arg), **kwargs)


def tiny_eval_config(**eval_overrides) -> ml_collections.ConfigDict:
    """The default config evaluating on 32x32 images: 5 held-out images, 1 mask per cell."""
    config = default_config()
    config.data.image_size = 32
    config.eval.update(masks_per_cell=1, num_images=5, batch_size=4, **eval_overrides)
    return config


def random_batch(n: int = 8, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Images in [0, 1] and binary masks (1 = valid) with about a third holes."""
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, size, size, 3), np.float32),
            "mask": (rng.random((n, size, size, 1)) > 0.35).astype(np.float32)}


def param_leaves(state: nnx.State) -> dict[str, np.ndarray]:
    """{'encoder/1/bn/scale': array, ...} of a params or batch_stats State."""
    return {jax.tree_util.keystr(path[:-1], simple=True, separator="/"): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def tree_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of two trees of arrays."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


# Runs train.py on a tiny demo network for many steps; the parent sends SIGTERM mid-run.
TRAIN_PY_TINY = ["--config", "configs/demo.py", "--config.data.image_size=32",
                 "--config.model.depth=3", "--config.model.base_width=4",
                 "--config.model.max_width=8", "--config.eval.num_images=2",
                 "--config.train.eval_batch_size=2", "--config.train.num_steps=100000",
                 "--config.train.eval_every_steps=100000", "--config.train.log_every_steps=2",
                 "--config.train.checkpoint_every_steps=2",
                 "--config.train.async_checkpoints=False"]


def tiny_workdir(workdir) -> None:
    """A workdir with config.json and a step-0 checkpoint of a tiny network (no training)."""
    from pconv_jax import config as config_lib
    from pconv_jax.inference import convert
    from pconv_jax.training.step import create_model
    config = config_lib.default_config()
    config.model.depth, config.model.base_width, config.model.max_width = 2, 4, 8
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    convert.write_checkpoint(config, create_model(config), str(workdir))
