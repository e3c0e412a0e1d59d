"""Checkpoints: exact resume after kill -9, restore onto another device count, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import optax
import pytest
from flax import nnx

from pconv_jax.training import checkpoints, mesh
from pconv_jax.training.loop import train_and_evaluate
from pconv_jax.training.step import create_train_state
from test_train_helpers import REPO, demo_config, tree_equal

STEPS, EVERY = 12, 4

# Trains the tiny demo config with a slowed pipeline, so that the parent can kill it mid-run.
KILLED_RUN = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from pconv_jax.data import pipeline
    from pconv_jax.training.loop import train_and_evaluate
    from test_train_helpers import demo_config
    create = pipeline.create_train_pipeline

    class Slow:
        def __init__(self, pipeline): self.pipeline = pipeline
        def __next__(self):
            time.sleep(0.5)
            return next(self.pipeline)
        def get_state(self): return self.pipeline.get_state()
        def set_state(self, state): self.pipeline.set_state(state)

    pipeline.create_train_pipeline = lambda *a, **k: Slow(create(*a, **k))
    config = demo_config(steps=%d)
    config.train.checkpoint_every_steps = %d
    config.train.async_checkpoints = True
    train_and_evaluate(config, sys.argv[1])
""" % (STEPS, EVERY))


def _config():
    config = demo_config(steps=STEPS)
    config.train.checkpoint_every_steps = EVERY
    return config


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path, compiled_steps):
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(killed_dir)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = killed_dir / "checkpoints" / str(EVERY)
    deadline = time.time() + 300
    while not first.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    log = process.communicate()[0].decode(errors="replace")
    assert first.is_dir(), log[-3000:]
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = checkpoints.Checkpointer(str(killed_dir / "checkpoints"), save_every_steps=EVERY,
                                     keep=3, read_only=True)
    assert EVERY <= saved.latest_step() < STEPS
    saved.close()

    steps = compiled_steps(_config())
    resumed = train_and_evaluate(_config(), str(killed_dir), steps=steps)
    uninterrupted = train_and_evaluate(_config(), str(tmp_path / "uninterrupted"), steps=steps)
    assert int(resumed.step) == int(uninterrupted.step) == STEPS
    for got, want in ((resumed.params, uninterrupted.params),
                      (resumed.batch_stats, uninterrupted.batch_stats),
                      (resumed.opt_state, uninterrupted.opt_state)):
        assert tree_equal(got, want)
    model, step = checkpoints.restore_model(_config(), str(killed_dir))
    assert step == STEPS
    assert tree_equal(nnx.state(model, nnx.Param), uninterrupted.params)


def _saved_state(tmp_path, devices):
    config = demo_config()
    data_mesh = mesh.make_data_mesh(devices)
    tx = optax.adam(1e-3)
    _, state = create_train_state(config, tx, data_mesh)
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1,
                                            keep=2, asynchronous=False)
    checkpointer.save(3, model=state.model_item(), train=state.train_item(),
                      data_state={"position": 24})
    checkpointer.close()
    return config, state, tx


def test_restore_onto_another_device_count(tmp_path):
    config, state, tx = _saved_state(tmp_path, jax.devices())  # written from 8 devices
    data_mesh = mesh.make_data_mesh(jax.devices()[:2])
    _, target = create_train_state(config, tx, data_mesh)
    replicated = mesh.replicated(data_mesh)
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1,
                                            keep=2, read_only=True)
    model, train, data_states, step = checkpointer.restore(
        checkpoints.abstract_like(target.model_item(), replicated),
        checkpoints.abstract_like(target.train_item(), replicated))
    checkpointer.close()
    assert step == 3 and data_states == [{"position": 24}]
    assert tree_equal(model["params"], state.params)
    assert tree_equal(train["opt_state"], state.opt_state)
    leaf = jax.tree.leaves(model["params"])[0]
    assert leaf.sharding.mesh.devices.size == 2 and leaf.sharding.is_fully_replicated


def test_restore_model_for_inference(tmp_path):
    config, state, _ = _saved_state(tmp_path, jax.devices())
    model, step = checkpoints.restore_model(config, str(tmp_path))
    assert step == 3
    assert model.encoder[1].bn.use_running_average  # eval mode
    assert tree_equal(nnx.state(model, nnx.Param), state.params)
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7.*available steps: \\[3\\]"):
        checkpoints.restore_model(config, str(tmp_path), step=7)
    with pytest.raises(FileNotFoundError, match="no checkpoints in workdir"):
        checkpoints.restore_model(config, str(tmp_path / "nowhere"))


def test_incompatible_config_names_the_shapes(tmp_path):
    config, _, _ = _saved_state(tmp_path, jax.devices())
    wider = demo_config()
    wider.model.base_width = 8
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"encoder/0/conv/kernel: checkpoint \(7, 7, 3, 4\) vs config \(7, 7, 3, 8\)"):
        checkpoints.restore_model(wider, str(tmp_path))
    deeper = demo_config()
    deeper.model.depth = 4
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match="encoder/3/conv/kernel: missing"):
        train_and_evaluate(deeper, str(tmp_path))


def test_sigterm_requests_a_final_save(tmp_path):
    checkpointer = checkpoints.Checkpointer(str(tmp_path), save_every_steps=5, keep=1)
    checkpointer.install_signal_handler()
    try:
        assert not checkpointer.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert checkpointer.should_stop(2)
    finally:
        checkpointer.close()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_sigterm_during_training_saves_and_stops(tmp_path, monkeypatch, compiled_steps):
    from pconv_jax.data import pipeline
    create = pipeline.create_train_pipeline

    class TerminatedAtThirdBatch:
        def __init__(self, pipeline):
            self.pipeline, self.count = pipeline, 0

        def __next__(self):
            self.count += 1
            if self.count == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice would
            return next(self.pipeline)

        def get_state(self):
            return self.pipeline.get_state()

        def set_state(self, state):
            self.pipeline.set_state(state)

    monkeypatch.setattr(pipeline, "create_train_pipeline",
                        lambda *a, **k: TerminatedAtThirdBatch(create(*a, **k)))
    previous = signal.getsignal(signal.SIGTERM)
    state = train_and_evaluate(_config(), str(tmp_path), steps=compiled_steps(_config()))
    assert int(state.step) == 3
    assert signal.getsignal(signal.SIGTERM) == previous
    saved = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=EVERY,
                                     keep=3, read_only=True)
    assert saved.all_steps() == [3]
    saved.close()
