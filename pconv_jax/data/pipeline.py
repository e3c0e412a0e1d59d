"""Input pipelines: image sources paired with hole masks, per host, resumable.

Every batch is a pure function of (seed, process index, position in the example stream):
examples are visited in a seeded per-epoch order, crops and flips use stateless random ops
seeded by (seed, position), masks are drawn with NumPy seeded by (seed, position). The
pipeline's state is therefore just its position, a small JSON-serialisable dict that the
training checkpoint stores; a resumed run sees exactly the batches of an uninterrupted one.

Batches are dicts of NumPy arrays, local to the process:
  'image': float32 in [0, 1], (B_local, H, W, 3)
  'mask':  float32, 1 = valid, 0 = hole, (B_local, H, W, 1)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from pconv_jax.data import sources as data_sources
from pconv_jax.data.images import try_read_image
from pconv_jax.data.masks import generate_mask
from pconv_jax.data.nvidia_masks import NvidiaTrainMasks

try:  # TensorFlow only feeds data: keep it off the accelerators JAX uses.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised already; nothing left to hide then.
    pass

DATASETS = ("demo", "folder") + data_sources.TFDS_NAMES
Batch = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- pipeline object

class TrainPipeline:
    """An endless iterator of process-local batches with a saveable position.

    `get_state()` returns {'position': examples consumed by this process}; `set_state` on a
    pipeline built with the same config and seed continues exactly from there.
    """

    def __init__(self, make_dataset: Callable[[int], tf.data.Dataset], local_batch_size: int,
                 skipped_files: Callable[[], int] = lambda: 0):
        self._make_dataset = make_dataset
        self.local_batch_size = local_batch_size
        self._skipped_files = skipped_files
        self._position = 0
        self._iterator: Iterator[Batch] | None = None

    def __iter__(self) -> TrainPipeline:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:  # built lazily so that set_state() right after costs nothing
            self._iterator = self._make_dataset(self._position).as_numpy_iterator()
        batch = next(self._iterator)
        self._position += self.local_batch_size
        return batch

    def get_state(self) -> dict[str, int]:
        """The position to store with the training checkpoint."""
        return {"position": self._position}

    def set_state(self, state: dict) -> None:
        """Continues from a position returned by `get_state`."""
        position = int(state["position"])
        if position < 0:
            raise ValueError(f"pipeline position must be >= 0, got {position}.")
        self._position = position
        self._iterator = None

    @property
    def skipped_files(self) -> int:
        """Unreadable image files met (and replaced) so far."""
        return self._skipped_files()


# ----------------------------------------------------------------------------- helpers

def _key(*parts: int) -> int:
    """A 31-bit key derived from non-negative ints (stable across runs and machines)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0] >> 1)


def _parallel(config: ml_collections.ConfigDict) -> int:
    calls = int(config.data.get("num_parallel_calls", -1))
    return tf.data.AUTOTUNE if calls < 0 else max(1, calls)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    return process_index, process_count


def _fit(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Scales an image (float32) so that its shorter side is >= size ('crop') or == size."""
    shape = tf.shape(image)
    short = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
    scale = size / short
    if mode == "crop":
        scale = tf.maximum(scale, 1.0)
    new_hw = tf.maximum(tf.cast(tf.math.ceil(tf.cast(shape[:2], tf.float32) * scale), tf.int32),
                        size)
    return tf.cond(tf.reduce_all(new_hw == shape[:2]), lambda: image,
                   lambda: tf.image.resize(image, new_hw, antialias=True))


def _check_mode(mode: str) -> str:
    if mode not in ("crop", "resize"):
        raise ValueError(f"config.data.resize_mode must be 'crop' or 'resize', got {mode!r}.")
    return mode


def _train_image(image: tf.Tensor, seed: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Random crop and horizontal flip, stateless; uint8 (H, W, 3) → float32 [0, 1] (S, S, 3)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = _fit(tf.cast(image, tf.float32), size, mode)
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def _eval_image(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Centre crop; uint8 (H, W, 3) → float32 [0, 1] (S, S, 3)."""
    image = _fit(tf.cast(image, tf.float32), size, mode)
    shape = tf.shape(image)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return tf.clip_by_value(image[top:top + size, left:left + size] / 255.0, 0.0, 1.0)


def make_mask_fn(mask_config: ml_collections.ConfigDict, size: int
                 ) -> Callable[[Sequence[int]], np.ndarray]:
    """A function seed → mask float32 (size, size, 1), 1 = valid, as `config.masks` asks."""
    if mask_config.source == "generated":
        return functools.partial(
            generate_mask, size=size, border=mask_config.border,
            hole_ratio_range=(mask_config.hole_ratio_min, mask_config.hole_ratio_max))
    if mask_config.source == "nvidia":
        return NvidiaTrainMasks(
            mask_config.nvidia_train_dir, size, rotate=mask_config.nvidia_rotate,
            dilation=(mask_config.nvidia_dilation_min, mask_config.nvidia_dilation_max))
    raise ValueError(f"config.masks.source must be 'generated' or 'nvidia', "
                     f"got {mask_config.source!r}.")


# ----------------------------------------------------------------------------- example streams

def _random_access_stream(source: data_sources.ImageSource, order_key: int, start: int,
                          parallel: int) -> tf.data.Dataset:
    """(uint8 image, position) from `start` on; each epoch visits the source in a seeded order."""
    n = len(source)

    @functools.lru_cache(maxsize=4)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([order_key, epoch]).permutation(n)

    def load(position: np.int64) -> np.ndarray:
        epoch, offset = divmod(int(position), n)
        return source.load(int(order(epoch)[offset]))

    def load_tf(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(load, [position], tf.uint8, stateful=False)
        image.set_shape([None, None, 3])
        return image, position

    return tf.data.Dataset.counter(start).map(load_tf, num_parallel_calls=parallel)


def _tfds_examples(config: ml_collections.ConfigDict, process_index: int, process_count: int
                   ) -> tuple[tf.data.Dataset, int]:
    """This process's share of the TFDS train split, images still encoded, and its size."""
    import tensorflow_datasets as tfds

    data = config.data
    builder = data_sources.tfds_builder(data.name, data_dir=data.tfds_data_dir,
                                        manual_dir=data.manual_dir, download=data.download)
    train_split, _ = data_sources.tfds_splits(data.name, data.heldout_count)
    split = tfds.split_for_jax_process(train_split, process_index=process_index,
                                       process_count=process_count, drop_remainder=True)
    raw = builder.as_dataset(split=split, shuffle_files=False,
                             decoders={"image": tfds.decode.SkipDecoding()})
    raw = raw.map(lambda example: example["image"])  # still encoded: skipping stays cheap
    n = int(raw.cardinality())
    if n <= 0:
        raise ValueError(f"{data.name} split {split} of process {process_index} has no examples "
                         f"(cardinality {n}).")
    return raw, n


def _tfds_stream(raw: tf.data.Dataset, n: int, shuffle_buffer: int, order_key: int, start: int,
                 parallel: int) -> tf.data.Dataset:
    """(uint8 image, position) from `start` on; epoch e is shuffled with seed order_key + e."""
    epoch, offset = divmod(start, n)
    stream = tf.data.Dataset.counter(epoch).flat_map(
        lambda e: raw.shuffle(shuffle_buffer, seed=order_key + e))
    images = stream.skip(offset).map(
        lambda encoded: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        num_parallel_calls=parallel)
    return tf.data.Dataset.zip(images, tf.data.Dataset.counter(start))


def _host_source(source: data_sources.ImageSource, process_index: int, process_count: int
                 ) -> data_sources.ImageSource:
    """Index striding; every process gets the same number of images."""
    per_process = len(source) // process_count
    if per_process < 1:
        raise ValueError(f"{len(source)} training images cannot be shared by {process_count} "
                         f"processes.")
    indices = range(process_index, per_process * process_count, process_count)
    return source.subset(list(indices))


def _train_source(config: ml_collections.ConfigDict) -> data_sources.ImageSource:
    data = config.data
    if data.name == "demo":
        return data_sources.demo_source("train")
    return data_sources.folder_source(data.folder, "train", heldout_count=data.heldout_count,
                                      heldout_fraction=data.heldout_fraction)


# ----------------------------------------------------------------------------- entry points

def create_train_pipeline(config: ml_collections.ConfigDict, *, seed: int,
                          process_index: int | None = None,
                          process_count: int | None = None) -> TrainPipeline:
    """Builds the training pipeline of this process from `config.data` and `config.masks`.

    Args:
      config: the whole config; reads `config.data` and `config.masks` (keys and defaults:
        `configs/default.py`).
      seed: non-negative int; the same seed gives the same batches.
      process_index, process_count: this process's share; default jax.process_index() and
        jax.process_count().

    Returns:
      A `TrainPipeline` yielding {'image': (B_local, S, S, 3), 'mask': (B_local, S, S, 1)}.
    """
    data = config.data
    if data.name not in DATASETS:
        raise ValueError(f"config.data.name must be one of {DATASETS}, got {data.name!r}.")
    process_index, process_count = _process(process_index, process_count)
    if data.batch_size % process_count:
        raise ValueError(f"config.data.batch_size {data.batch_size} is not divisible by the "
                         f"{process_count} processes.")
    local_batch = data.batch_size // process_count
    size, mode = int(data.image_size), _check_mode(data.resize_mode)
    mask_fn = make_mask_fn(config.masks, size)
    order_key, crop_key, mask_key = (_key(seed, process_index, i) for i in range(3))
    parallel = _parallel(config)

    source = tfds_examples = None
    if data.name in ("demo", "folder"):
        source = _host_source(_train_source(config), process_index, process_count)
    else:
        tfds_examples = _tfds_examples(config, process_index, process_count)

    def draw_mask(position: np.int64) -> np.ndarray:
        return mask_fn((mask_key, int(position)))

    def pair(image: tf.Tensor, position: tf.Tensor) -> dict[str, tf.Tensor]:
        image = _train_image(image, tf.stack([tf.constant(crop_key, tf.int64), position]),
                             size, mode)
        mask = tf.numpy_function(draw_mask, [position], tf.float32, stateful=False)
        mask.set_shape([size, size, 1])
        return {"image": image, "mask": mask}

    def make_dataset(start: int) -> tf.data.Dataset:
        if source is not None:
            stream = _random_access_stream(source, order_key, start, parallel)
        else:
            stream = _tfds_stream(*tfds_examples, data.shuffle_buffer, order_key, start, parallel)
        batches = stream.map(pair, num_parallel_calls=parallel).batch(local_batch,
                                                                      drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        return batches.prefetch(data.prefetch).with_options(options)

    skipped = (lambda: source.skipped) if source is not None else (lambda: 0)
    return TrainPipeline(make_dataset, local_batch, skipped)


def _demo_eval_images(size: int) -> list[np.ndarray]:
    """Non-overlapping crops on a grid over each held-out demo photograph (native resolution)."""
    source = data_sources.demo_source("heldout")
    crops = []
    for i in range(len(source)):
        image = source.load(i)
        if min(image.shape[:2]) < size:
            crops.append(image)  # centre-cropped after scaling up
            continue
        rows, cols = image.shape[0] // size, image.shape[1] // size
        top, left = (image.shape[0] - rows * size) // 2, (image.shape[1] - cols * size) // 2
        crops.extend(image[top + r * size:top + (r + 1) * size,
                           left + c * size:left + (c + 1) * size]
                     for r in range(rows) for c in range(cols))
    return crops


def load_eval_images(config: ml_collections.ConfigDict, count: int | None = None, *,
                     size: int | None = None) -> np.ndarray:
    """The first `count` held-out images, centre-cropped: float32 [0, 1], (count, S, S, 3).

    Held-out sets: Places365's validation split, CelebA-HQ's last `heldout_count` train
    examples, a folder's held-out files, the demo's held-out photographs (as grid crops).
    Every process gets the same images.

    Args:
      config: the whole config (reads `config.data`, `config.eval.num_images` and
        `config.eval.image_size`).
      count: number of images; default `config.eval.num_images`.
      size: side length; default `eval_image_size(config)`.
    """
    data = config.data
    count = int(config.eval.num_images if count is None else count)
    size = int(size or eval_image_size(config))
    mode = _check_mode(data.resize_mode)
    if data.name == "demo":
        images = _demo_eval_images(size)
    elif data.name == "folder":
        source = data_sources.folder_source(data.folder, "heldout",
                                            heldout_count=data.heldout_count,
                                            heldout_fraction=data.heldout_fraction)
        images = []  # unreadable held-out files are skipped, not replaced (no duplicates)
        for path in source.names:
            if len(images) == count:
                break
            image = try_read_image(path)
            if image is not None:
                images.append(image)
    elif data.name in data_sources.TFDS_NAMES:
        builder = data_sources.tfds_builder(data.name, data_dir=data.tfds_data_dir,
                                            manual_dir=data.manual_dir, download=data.download)
        _, heldout_split = data_sources.tfds_splits(data.name, data.heldout_count)
        dataset = builder.as_dataset(split=heldout_split, shuffle_files=False).take(count)
        images = [example["image"] for example in dataset.as_numpy_iterator()]
    else:
        raise ValueError(f"config.data.name must be one of {DATASETS}, got {data.name!r}.")
    if len(images) < count:
        raise ValueError(f"{data.name} holds only {len(images)} held-out images of size {size}, "
                         f"{count} were asked for; lower the count (config.eval.num_images) or "
                         f"hold out more images.")
    return np.stack([_eval_image(tf.constant(image), size, mode).numpy()
                     for image in images[:count]]).astype(np.float32)


def eval_image_size(config: ml_collections.ConfigDict) -> int:
    """The side of every evaluation image: `config.eval.image_size`, or the training size."""
    return int(config.eval.image_size or config.data.image_size)
