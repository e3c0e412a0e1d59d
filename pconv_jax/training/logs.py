"""Training logs: TensorBoard writers (process 0 only), image grids, progress with ETA."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import jax
import numpy as np

from pconv_jax.convention import MASK_THRESHOLD

if TYPE_CHECKING:  # clu's writers pull in TensorFlow: imported only where a run needs them
    from clu import metric_writers, periodic_actions


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard (in `workdir`) + console writer on process 0; console-only logging elsewhere."""
    import tensorflow as tf
    from clu import metric_writers
    try:  # TensorFlow writes the event files: keep it off the accelerators JAX uses.
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was initialised already; nothing left to hide then.
        pass
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def progress_reporter(num_steps: int, every_seconds: float = 60.0
                      ) -> periodic_actions.ReportProgress:
    """Logs steps/s, the fraction done and the ETA to the console.

    (TensorBoard gets steps/s and images/s from `Throughput` at log steps.)
    """
    from clu import periodic_actions
    return periodic_actions.ReportProgress(num_train_steps=num_steps, writer=None,
                                           every_secs=every_seconds, every_steps=None)


def image_grid(image: np.ndarray, mask: np.ndarray, output: np.ndarray,
               composite: np.ndarray) -> np.ndarray:
    """One row per example: masked input (holes white) | output | composite | ground truth.

    Inputs are (N, H, W, 3) in [0, 1] (mask (N, H, W, 1), 1 = valid); returns uint8
    (N*H, 4*W, 3) with a 2-pixel gap between panels.
    """
    masked = np.where(mask > MASK_THRESHOLD, image, 1.0)
    panels = [masked, output, composite, image]
    n, h, w, c = image.shape
    gap = 2
    grid = np.ones((n * (h + gap) - gap, 4 * (w + gap) - gap, c), np.float32)
    for row in range(n):
        for col, panel in enumerate(panels):
            top, left = row * (h + gap), col * (w + gap)
            grid[top:top + h, left:left + w] = np.clip(panel[row], 0.0, 1.0)
    return (grid * 255.0 + 0.5).astype(np.uint8)


class Throughput:
    """Images/s between two calls to `measure` (host wall-clock; call it at log steps)."""

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self._time, self._step = time.perf_counter(), None

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        result = {}
        if self._step is not None and step > self._step:
            steps_per_sec = (step - self._step) / max(now - self._time, 1e-9)
            result = {"steps_per_sec": steps_per_sec,
                      "images_per_sec": steps_per_sec * self.global_batch_size}
        self._time, self._step = now, step
        return result


class DataWait:
    """The fraction of wall-clock time the loop spent waiting for its next batch, per window.

    `next(pipeline)` goes through `DataWait.next`; `measure` at log steps returns
    {'data_wait_fraction': ...} since the previous call, and warns once when it exceeds 10 %,
    naming the pipeline's parallelism setting (`data.pipeline.parallelism`).

    Only waits that can have kept the accelerator idle count: JAX dispatches steps ahead of the
    accelerator, so a wait that ends before the last dispatched step is computed cost nothing.
    """

    def __init__(self, setting: str, count: int):
        self.setting, self.count = setting, count  # what the warning tells to raise
        self._waited, self._start, self._warned = 0.0, time.perf_counter(), False

    def next(self, pipeline, last_step: jax.Array | None = None):
        """`next(pipeline)`, timed; `last_step`: an output of the last dispatched train step."""
        start = time.perf_counter()
        batch = next(pipeline)
        if last_step is None or last_step.is_ready():  # else the accelerator was busy throughout
            self._waited += time.perf_counter() - start
        return batch

    def measure(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        fraction = self._waited / max(now - self._start, 1e-9)
        self._waited, self._start = 0.0, now
        if fraction > 0.1 and not self._warned:
            self._warned = True
            logging.getLogger("absl").warning(
                "the train step waited for data %.0f%% of the time up to step %d: the input "
                "pipeline is the bottleneck: raise config.data.%s (now %d) if cores are "
                "free, or give the run more cores", 100 * fraction, step, self.setting, self.count)
        return {"data_wait_fraction": fraction}


def mean_metrics(history: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """The mean of each metric over the steps of a log window (already on the host)."""
    return {k: float(np.mean([m[k] for m in history])) for k in history[0]}
