"""Input pipelines: image sources paired with hole masks, per host, resumable, on grain.

Every example is a pure function of (seed, process index, position in the example stream):
examples are visited in a seeded per-epoch permutation of the process's share of the source;
crops, flips and masks are drawn with NumPy generators seeded by (seed, position). A batch holds
consecutive positions, so the pipeline's state is just its position, a small JSON-serialisable
dict that the training checkpoint stores; a resumed run sees exactly the batches of an
uninterrupted one, whatever the number of workers.

The per-example work (decoding, cropping, mask drawing) runs in `config.data.workers` threads
of a grain pipeline (OpenCV and large NumPy operations release the GIL; batches need no copy
between processes), or, with `config.data.worker_processes` = N > 0, in N worker processes,
each making whole batches, whichever is free, in shared-memory slots (`shared_batches`; the
mask generator's Python holds the GIL, so threads alone cannot use many cores at 256²). Worker
processes ignore Ctrl-C (the training process handles it and closes them); one that dies ends
the run with a ChildProcessError. With either, a collector thread stacks or copies out the next
batch, so that `next` hands the training loop a finished one.

Batches are dicts of uint8 NumPy arrays, local to the process; they stay uint8 until they reach
the device, where the train step turns them into float32:
  'image': uint8 RGB, (B_local, H, W, 3)
  'mask':  uint8, 1 = valid, 0 = hole, (B_local, H, W, 1)
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence

import cv2
import grain
import ml_collections
import numpy as np
from absl import logging

from pconv_jax.data import crops
from pconv_jax.data import sources as data_sources
from pconv_jax.data.masks import generate_mask
from pconv_jax.data.nvidia_masks import NvidiaTrainMasks
from pconv_jax.data.shared_batches import BatchWorkers

Batch = dict[str, np.ndarray]
Example = dict[str, np.ndarray]


def resolve_workers(count: int, setting: str = "workers") -> int:
    """`config.data.<setting>` (`workers`: threads, `worker_processes`: processes) as a count:
    -1 means the usable cores less one, at least 1; 0 none."""
    count = int(count)
    if count < -1:
        raise ValueError(f"config.data.{setting} must be >= -1 (-1 = automatic), got {count}.")
    if count == -1:
        return max(1, len(os.sched_getaffinity(0)) - 1)
    return count


def parallelism(data_config: ml_collections.ConfigDict) -> tuple[str, int]:
    """The `config.data` setting that sets the training pipeline's parallelism, and its count:
    ('worker_processes', N) when it uses worker processes, else ('workers', threads)."""
    processes = resolve_workers(data_config.worker_processes, "worker_processes")
    if processes:
        return "worker_processes", processes
    return "workers", resolve_workers(data_config.workers)


# ----------------------------------------------------------------------------- pipeline object

class TrainPipeline:
    """An endless iterator of process-local uint8 batches with a saveable position.

    `get_state()` returns {'position': examples consumed by this process}; `set_state` on a
    pipeline built with the same config and seed continues exactly from there.
    """

    def __init__(self, example: Callable[[int], Example], local_batch_size: int, *,
                 workers: int, prefetch: int, processes: int = 0,
                 skipped_names: Callable[[], frozenset[str]] = frozenset):
        self.example = example  # position -> example: the whole per-example work
        self.local_batch_size = local_batch_size
        self.workers = workers
        self.processes = processes  # > 0: worker processes each making whole batches
        self.prefetch = prefetch
        self._skipped_names = skipped_names
        self._worker_skipped: set[str] = set()  # unreadable files met by worker processes
        self._position = 0
        self._iterator = None  # what `next` reads: the collector thread's queue, or the below
        self._source_iterator = None  # the batches the collector thread reads
        self._workers: BatchWorkers | None = None  # the worker processes

    def examples(self, start: int = 0) -> grain.MapDataset:
        """The example stream from position `start` on (endless), as a grain MapDataset."""
        return grain.MapDataset.range(start, sys.maxsize).map(self.example)

    def _make_iterator(self):
        if self.processes:
            batches = self._process_batches()
        else:
            ahead = self.prefetch * self.local_batch_size if self.workers else 0  # in flight
            read = grain.ReadOptions(num_threads=self.workers, prefetch_buffer_size=ahead)
            batches = self.examples(self._position).to_iter_dataset(read).batch(
                self.local_batch_size, drop_remainder=True)
            if not self.workers:  # everything in the calling thread, for debugging
                return iter(batches)
        # A collector thread stacks (threads) or copies out (processes) the next batch while
        # the training loop dispatches steps, off the loop's thread (figures: docs/data.md).
        self._source_iterator = iter(batches)
        return grain.experimental.ThreadPrefetchDatasetIterator(self._source_iterator, 1)

    def _process_batches(self) -> BatchWorkers:
        # Batch b of the stream is made whole by whichever worker process is free, in one of
        # the shared-memory slots; the collector thread hands them on in order.
        first = self.example(self._position)  # the batch layout
        layout = {key: ((self.local_batch_size,) + value.shape, value.dtype)
                  for key, value in first.items()}
        # Slots: one being filled per worker, one made ahead of the parent's turn per worker (a
        # slow worker's batch is awaited while the others go on), `prefetch` ready batches.
        self._workers = BatchWorkers(
            _BatchMaker(self.example, self.local_batch_size, self._position,
                        self._skipped_names),
            self.processes, 2 * self.processes + self.prefetch, layout, _init_worker)
        return self._workers

    def __iter__(self) -> TrainPipeline:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:  # built lazily so that set_state() right after costs nothing
            self._iterator = self._make_iterator()
        batch = next(self._iterator)
        if self.processes:  # (batch, the unreadable files the worker that made it has met)
            batch, skipped = batch
            self._worker_skipped.update(skipped)
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
        self.close()
        self._position = position

    def close(self) -> None:
        """Stops the collector thread and the worker threads or processes (pending work is
        cancelled); `next` starts them again."""
        self._stop()
        if self.skipped_files:
            logging.warning("%d unreadable image files were skipped so far", self.skipped_files)

    def _stop(self) -> None:
        if self._workers is not None:
            self._workers.stop_workers()  # ends the collector thread's wait for a batch
        for iterator in (self._iterator, self._source_iterator):  # the collector thread first
            if iterator is not None:
                _close(iterator)
        self._iterator = self._source_iterator = None
        self._workers = None  # (closed with the iterators: it is the collector's source)

    def __del__(self):
        if hasattr(self, "_workers") and _close is not None:  # (at interpreter exit the module
            self._stop()                                       # may be gone)

    @property
    def skipped_files(self) -> int:
        """Unreadable image files met (and replaced) so far."""
        return len(self._skipped_names() | self._worker_skipped)


def _init_worker() -> None:
    """In a worker process: Ctrl-C (SIGINT to the terminal's process group) is the parent's to
    handle (it stops the workers when it closes the pipeline); OpenCV on one thread, as the
    workers already share the cores; the modules imported by now live as long as the worker, so
    they are kept out of the garbage collector's full passes (docs/performance.md)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    gc.freeze()


def _close(iterator) -> None:
    """Stops a grain iterator's threads or worker processes."""
    close = getattr(iterator, "close", None) or getattr(iterator, "stop_prefetch", None)
    if close is not None:
        close()


class _BatchMaker:
    """Batch index b -> (the examples of positions start + b·B ... (+ B - 1) by field, the
    unreadable files met so far), in a worker process. Picklable."""

    def __init__(self, example: Callable[[int], Example], batch_size: int, start: int,
                 skipped_names: Callable[[], frozenset[str]]):
        self.example, self.batch_size, self.start = example, batch_size, start
        self.skipped_names = skipped_names

    def __call__(self, index: int) -> tuple[dict[str, list[np.ndarray]], tuple[str, ...]]:
        first = self.start + index * self.batch_size
        examples = [self.example(p) for p in range(first, first + self.batch_size)]
        return ({key: [e[key] for e in examples] for key in examples[0]},
                tuple(sorted(self.skipped_names())))


# ----------------------------------------------------------------------------- helpers

class _SkippedNames:
    """A picklable `source.skipped_names` getter (a lambda cannot reach worker processes)."""

    def __init__(self, source: data_sources.ImageSource):
        self.source = source

    def __call__(self) -> frozenset[str]:
        return self.source.skipped_names


def _key(*parts: int) -> int:
    """A 31-bit key derived from non-negative ints (stable across runs and machines)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0] >> 1)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    return process_index, process_count


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


def _host_source(source: data_sources.ImageSource, process_index: int, process_count: int
                 ) -> data_sources.ImageSource:
    """Index striding; every process gets the same number of images."""
    per_process = len(source) // process_count
    if per_process < 1:
        raise ValueError(f"{len(source)} training images cannot be shared by {process_count} "
                         f"processes.")
    return source.subset(range(process_index, per_process * process_count, process_count))


class TrainExample:
    """position -> training example {'image', 'mask'}: the whole per-example work.

    Position p is item order(p // n)[p % n] of the n-item source (a seeded permutation per
    epoch), cropped, flipped and masked with generators seeded by (key, p). Picklable, so that
    worker processes can run it too.
    """

    def __init__(self, source: data_sources.ImageSource, keys: Sequence[int], size: int,
                 mode: str, mask_fn: Callable[[Sequence[int]], np.ndarray]):
        self.source, self.size, self.mode, self.mask_fn = source, size, mode, mask_fn
        self.order_key, self.crop_key, self.mask_key = keys
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation; the last two are kept (threads may straddle an epoch end)."""
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.order_key, epoch]).permutation(len(self.source))
            kept = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders = {**kept, epoch: order}  # replaced whole: safe for concurrent readers
        return order

    def __call__(self, position: int) -> Example:
        epoch, offset = divmod(position, len(self.source))
        image = self.source.load(int(self.order(epoch)[offset]))
        rng = np.random.default_rng([self.crop_key, position])
        mask = self.mask_fn((self.mask_key, position))
        return {"image": crops.random_crop(image, rng, self.size, self.mode),
                "mask": mask.astype(np.uint8)}


# ----------------------------------------------------------------------------- entry points

def create_train_pipeline(config: ml_collections.ConfigDict, *, seed: int,
                          process_index: int | None = None,
                          process_count: int | None = None) -> TrainPipeline:
    """Builds the training pipeline of this process from `config.data` and `config.masks`.

    Args:
      config: the whole config; reads `config.data` and `config.masks` (keys and defaults:
        `pconv_jax/configs/default.py`).
      seed: non-negative int; the same seed gives the same batches.
      process_index, process_count: this process's share; default jax.process_index() and
        jax.process_count().

    Returns:
      A `TrainPipeline` yielding uint8 {'image': (B_local, S, S, 3), 'mask': (B_local, S, S, 1)}.
    """
    data = config.data
    data_source = data_sources.get(data.name)
    process_index, process_count = _process(process_index, process_count)
    if data.batch_size % process_count:
        raise ValueError(f"config.data.batch_size {data.batch_size} is not divisible by the "
                         f"{process_count} processes.")
    local_batch = data.batch_size // process_count
    size, mode = int(data.image_size), crops.check_mode(data.resize_mode)
    workers, prefetch = resolve_workers(data.workers), int(data.prefetch)
    processes = resolve_workers(data.worker_processes, "worker_processes")
    if prefetch < 1:
        raise ValueError(f"config.data.prefetch must be >= 1 (batches), got {prefetch}.")
    mask_fn = make_mask_fn(config.masks, size)
    source = _host_source(data_source.train(data), process_index, process_count)
    example = TrainExample(source, [_key(seed, process_index, i) for i in range(3)], size, mode,
                           mask_fn)
    return TrainPipeline(example, local_batch, workers=workers, prefetch=prefetch,
                         processes=processes, skipped_names=_SkippedNames(source))
