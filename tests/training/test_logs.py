"""The time the train loop waits for its next batch: measured per log window, warned about."""

from __future__ import annotations

import glob
import logging
import os
import time

import pytest

from pconv_jax.training import logs


class _SlowPipeline:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __next__(self):
        time.sleep(self.seconds)
        return {}


def _window(data_wait: logs.DataWait, pipeline, step_seconds: float, steps: int = 4) -> float:
    for _ in range(steps):
        data_wait.next(pipeline)
        time.sleep(step_seconds)  # the train step
    return data_wait.measure(steps)["data_wait_fraction"]


def test_data_wait_fraction_and_one_warning(caplog):
    data_wait = logs.DataWait("workers", 3)
    with caplog.at_level(logging.WARNING):
        starved = _window(data_wait, _SlowPipeline(0.05), step_seconds=0.005)
        assert starved > 0.5
        assert "config.data.workers (now 3)" in caplog.text
        caplog.clear()
        assert _window(data_wait, _SlowPipeline(0.05), step_seconds=0.005) > 0.5
        assert "config.data.workers" not in caplog.text  # warned once per run
    fed = _window(logs.DataWait("workers", 3), _SlowPipeline(0.0), step_seconds=0.05)
    assert fed < 0.2


def test_the_warning_names_the_setting_in_use(caplog):
    from pconv_jax.data.pipeline import parallelism
    from tests.helpers.data import data_config
    config = data_config("demo", size=16, batch=2, workers=3)
    assert parallelism(config.data) == ("workers", 3)
    config.data.worker_processes = 2  # processes: the thread setting no longer matters
    assert parallelism(config.data) == ("worker_processes", 2)
    with caplog.at_level(logging.WARNING):
        _window(logs.DataWait(*parallelism(config.data)), _SlowPipeline(0.05),
                step_seconds=0.005)
    assert "raise config.data.worker_processes (now 2)" in caplog.text
    assert "config.data.workers" not in caplog.text


@pytest.mark.slow
def test_train_loop_logs_data_wait_fraction(tmp_path):
    import tensorflow as tf

    from pconv_jax.training.loop import train_and_evaluate
    from tests.helpers.training import demo_config
    train_and_evaluate(demo_config(steps=2), str(tmp_path))
    fractions = []
    for path in glob.glob(os.path.join(tmp_path, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            fractions += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value
                          if v.tag == "data_wait_fraction"]
    assert len(fractions) == 1 and 0.0 <= fractions[0] <= 1.0


class _Step:
    """Stands for an output of the last dispatched train step."""

    def __init__(self, computed: bool):
        self.computed = computed

    def is_ready(self) -> bool:
        return self.computed


def test_waits_while_the_accelerator_is_still_busy_do_not_count(caplog):
    # JAX dispatches steps ahead: a batch that arrives before the last step is computed kept
    # nothing idle (the demo's own training warned of a bottleneck this way).
    def window(computed: bool) -> float:
        data_wait, pipeline = logs.DataWait("workers", 1), _SlowPipeline(0.05)
        for _ in range(4):
            data_wait.next(pipeline, _Step(computed))
            time.sleep(0.005)
        return data_wait.measure(4)["data_wait_fraction"]

    with caplog.at_level(logging.WARNING):
        assert window(computed=False) == 0.0
        assert "bottleneck" not in caplog.text
        assert window(computed=True) > 0.5  # the step was done: the accelerator waited
        assert "bottleneck" in caplog.text
