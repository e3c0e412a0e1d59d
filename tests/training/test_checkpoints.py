"""Checkpoints: exact resume after kill -9, restore onto another device count, the network's
settings checked on every restore, fallback past unreadable steps, no non-finite state saved,
preemption's exit status, clear errors."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from pconv_jax.training import checkpoints, mesh
from pconv_jax.training.loop import EXIT_PREEMPTED, Preempted, train_and_evaluate
from pconv_jax.training.step import create_train_state
from tests.helpers.training import REPO, TRAIN_PY_TINY, demo_config, tree_equal

STEPS, EVERY = 12, 4

# Trains the tiny demo config with a slowed pipeline, so that the parent can kill it mid-run.
KILLED_RUN = textwrap.dedent(f"""
    import os, sys, time
    sys.path.insert(0, os.getcwd())
    from pconv_jax.data import pipeline
    from pconv_jax.training.loop import train_and_evaluate
    from tests.helpers.training import demo_config
    create = pipeline.create_train_pipeline

    class Slow:
        def __init__(self, pipeline): self.pipeline = pipeline
        def __next__(self):
            time.sleep(0.5)
            return next(self.pipeline)
        def get_state(self): return self.pipeline.get_state()
        def set_state(self, state): self.pipeline.set_state(state)
        def close(self): self.pipeline.close()

    pipeline.create_train_pipeline = lambda *a, **k: Slow(create(*a, **k))
    config = demo_config(steps={STEPS})
    config.train.checkpoint_every_steps = {EVERY}
    config.train.async_checkpoints = True
    train_and_evaluate(config, sys.argv[1])
""")


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


def _saved_state(tmp_path, devices, *, steps=(3,), network=True):
    """Saves the demo network's fresh state at `steps`; `network=False` writes checkpoints as
    before the network's settings were recorded."""
    config = demo_config()
    data_mesh = mesh.make_data_mesh(devices)
    tx = optax.adam(1e-3)
    _, state = create_train_state(config, tx, data_mesh)
    checkpointer = checkpoints.Checkpointer(
        str(tmp_path / "checkpoints"), save_every_steps=1, keep=len(steps) + 1,
        asynchronous=False, network=checkpoints.network_config(config.model) if network else None)
    for step in steps:
        checkpointer.save(step, model=state.model_item(), train=state.train_item(),
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
    with pytest.raises(FileNotFoundError,
                       match="no checkpoint of step 7.*available steps: \\[3\\]"):
        checkpoints.restore_model(config, str(tmp_path), step=7)
    with pytest.raises(FileNotFoundError, match="no checkpoints in workdir"):
        checkpoints.restore_model(config, str(tmp_path / "nowhere"))


def test_incompatible_config_names_the_shapes(tmp_path):
    # Checkpoints without recorded network settings are still checked array by array.
    config, _, _ = _saved_state(tmp_path, jax.devices(), network=False)
    wider = demo_config()
    wider.model.base_width = 8
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"encoder/0/conv/kernel: checkpoint \(7, 7, 3, 4\) "
                             r"vs config \(7, 7, 3, 8\)"):
        checkpoints.restore_model(wider, str(tmp_path))
    deeper = demo_config()
    deeper.model.depth = 4
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match="encoder/3/conv/kernel: missing"):
        train_and_evaluate(deeper, str(tmp_path))
    assert not (tmp_path / "config.json").exists()  # a refused resume writes no config.json


def test_a_sigterm_requests_a_final_save(tmp_path):
    checkpointer = checkpoints.Checkpointer(str(tmp_path), save_every_steps=5, keep=1)
    try:
        assert not checkpointer.should_stop(1)
        assert checkpointer.should_stop(2, terminated=True)
    finally:
        checkpointer.close()


@pytest.mark.slow
def test_sigterm_during_training_saves_and_stops(tmp_path, monkeypatch, compiled_steps):
    from tests.helpers.data import wrap_train_pipeline

    def terminate_at_the_third(count, batch):
        if count == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a preemption notice would
        return batch

    wrap_train_pipeline(monkeypatch, terminate_at_the_third)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        train_and_evaluate(_config(), str(tmp_path), steps=compiled_steps(_config()))
    assert stopped.value.code == EXIT_PREEMPTED == 143  # a SystemExit: the process's status
    assert stopped.value.step == 3 and int(stopped.value.state.step) == 3
    assert signal.getsignal(signal.SIGTERM) == previous
    saved = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=EVERY,
                                     keep=3, read_only=True)
    assert saved.all_steps() == [3]
    saved.close()


@pytest.mark.slow
@pytest.mark.parametrize("worker_processes", [0, 2])
def test_sigterm_to_train_py_saves_and_exits_143(tmp_path, worker_processes):
    import psutil
    work = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "train.py", *TRAIN_PY_TINY, f"--workdir={work}",
                                f"--config.data.worker_processes={worker_processes}"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = work / "checkpoints" / "2"
    deadline = time.time() + 300
    while not first.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    children = psutil.Process(process.pid).children(recursive=True)  # the pipeline's workers
    started = first.is_dir()  # checked now: later saves may rotate step 2 out
    process.send_signal(signal.SIGTERM)
    try:
        log = process.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
    assert started, log[-3000:]
    assert process.returncode == EXIT_PREEMPTED, log[-3000:]
    saved = checkpoints.Checkpointer(str(work / "checkpoints"), save_every_steps=2, keep=3,
                                       read_only=True)
    final = saved.latest_step()
    saved.close()
    assert final >= 2 and f"preemption: saved step {final}" in log
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"  # no worker process outlives the run


# ----------------------------------------------------------------------------- network settings

def test_network_settings_are_stored_and_refused_on_restore(tmp_path):
    _saved_state(tmp_path, jax.devices())
    saved = json.loads((tmp_path / "checkpoints" / "3" / "network" / "metadata").read_text())
    assert saved == checkpoints.network_config(demo_config().model)
    assert saved["partial"] is True and saved["depth"] == 3
    assert not {"dtype", "remat", "bn_momentum"} & saved.keys()

    conv = demo_config("conv")  # same shapes, ordinary convolutions: the arrays alone match
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"model\.partial: checkpoint True vs config False"):
        checkpoints.restore_model(conv, str(tmp_path))
    filled = demo_config()
    filled.model.hole_fill = 0.25
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"model\.hole_fill: checkpoint 0\.5 vs config 0\.25"):
        checkpoints.restore_model(filled, str(tmp_path))
    # Settings that leave the parameters' meaning unchanged do not matter.
    other = demo_config()
    other.model.remat, other.model.dtype, other.model.bn_momentum = True, "bfloat16", 0.99
    _, step = checkpoints.restore_model(other, str(tmp_path))
    assert step == 3


def test_checkpoint_without_network_settings_restores_with_a_warning(tmp_path, caplog):
    config, state, _ = _saved_state(tmp_path, jax.devices(), network=False)
    assert not (tmp_path / "checkpoints" / "3" / "network").exists()
    with caplog.at_level(logging.WARNING):
        model, step = checkpoints.restore_model(config, str(tmp_path))
    assert step == 3 and "does not record its network settings" in caplog.text
    assert tree_equal(nnx.state(model, nnx.Param), state.params)


@pytest.mark.slow
def test_conv_resume_of_a_pconv_workdir_is_refused_before_anything_changes(tmp_path):
    config = demo_config(steps=2)
    train_and_evaluate(config, str(tmp_path))
    config_json = (tmp_path / "config.json").read_bytes()
    listing = sorted(os.listdir(tmp_path / "checkpoints"))
    conv = demo_config("conv", steps=6)
    conv.train.checkpoint_every_steps = 1
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match=r"model\.partial"):
        train_and_evaluate(conv, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == listing == ["2"]
    assert (tmp_path / "config.json").read_bytes() == config_json
    deeper = demo_config(steps=6)
    deeper.model.depth = 4
    with pytest.raises(checkpoints.IncompatibleCheckpointError,
                       match=r"model\.depth: checkpoint 3 vs config 4"):
        train_and_evaluate(deeper, str(tmp_path))
    assert (tmp_path / "config.json").read_bytes() == config_json


def test_init_from_checks_the_network_settings(tmp_path):
    _saved_state(tmp_path / "train", jax.devices())
    fine = demo_config("finetune,conv")
    fine.train.init_from = str(tmp_path / "train")
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match=r"model\.partial"):
        train_and_evaluate(fine, str(tmp_path / "finetune"))


# ----------------------------------------------------------------------------- unreadable steps

def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _array_files(step_dir) -> list[str]:
    """The array data files of the step's model item."""
    return glob.glob(os.path.join(step_dir, "model", "**", "d", "*"), recursive=True)


# Every array file is damaged, not one: this process wrote them, and TensorStore's in-process
# cache can still serve a file it has just written.
def _truncate_array_files(step_dir) -> dict[str, int]:
    """Truncates every array data file of the step's model item; returns {path: new size}."""
    files = _array_files(step_dir)
    for path in files:
        _truncate(path)
    return {os.path.relpath(path, step_dir): os.path.getsize(path) for path in files}


DAMAGES = {
    "missing _METADATA": lambda step_dir: os.remove(os.path.join(step_dir, "model", "_METADATA")),
    "truncated array files": lambda step_dir: _truncate_array_files(step_dir),
    "missing array files": lambda step_dir: [os.remove(p) for p in _array_files(step_dir)],
    "missing data item": lambda step_dir: shutil.rmtree(os.path.join(step_dir, "data")),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_unreadable_latest_step_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    config, state, tx = _saved_state(tmp_path, jax.devices(), steps=(3, 5))
    bad = tmp_path / "checkpoints" / "5"
    DAMAGES[damage](str(bad))
    data_mesh = mesh.make_data_mesh()
    _, target = create_train_state(config, tx, data_mesh)
    replicated = mesh.replicated(data_mesh)
    reader = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1,
                                        keep=3, read_only=True,
                                        network=checkpoints.network_config(config.model))
    with caplog.at_level(logging.WARNING):
        model, train, _, step = reader.restore(
            checkpoints.abstract_like(target.model_item(), replicated),
            checkpoints.abstract_like(target.train_item(), replicated))
    reader.close()
    assert step == 3 and tree_equal(model["params"], state.params)
    assert f"{tmp_path / 'checkpoints'}/5 is unreadable" in caplog.text
    assert "different network" not in caplog.text
    assert bad.is_dir()  # read-only: left where it is
    if damage != "missing data item":  # inference needs the model item only
        _, step = checkpoints.restore_model(config, str(tmp_path))
        assert step == 3


def test_no_readable_step_is_one_clear_error(tmp_path):
    config, _, _ = _saved_state(tmp_path, jax.devices(), steps=(3, 5))
    for step in (3, 5):
        os.remove(os.path.join(tmp_path, "checkpoints", str(step), "model", "_METADATA"))
    with pytest.raises(checkpoints.UnreadableCheckpointError,
                       match=r"no readable checkpoint in .*checkpoints:\n  step 5: .*\n  step 3: "):
        checkpoints.restore_model(config, str(tmp_path))
    with pytest.raises(checkpoints.UnreadableCheckpointError,
                       match=r"checkpoints/5 is unreadable .*available: \[3, 5\]"):
        checkpoints.restore_model(config, str(tmp_path), step=5)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "5"]


def _rotate_while_reading(monkeypatch, tmp_path, config, state, *, times: int):
    """A training beside the reader: each of the reader's first `times` step reads starts after
    the writer (keep_checkpoints=1) saved a newer step and removed the older one."""
    writer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1, keep=1,
                                      asynchronous=False,
                                      network=checkpoints.network_config(config.model))
    read = checkpoints.Checkpointer._checked_metadata
    saved = []

    def rotate_then_read(self, step, abstract):
        if self.read_only and len(saved) < times:
            saved.append(max(writer.all_steps()) + 1)
            writer.save(saved[-1], model=state.model_item(), train=state.train_item(),
                        data_state={})
        return read(self, step, abstract)

    monkeypatch.setattr(checkpoints.Checkpointer, "_checked_metadata", rotate_then_read)
    return writer, saved


def test_a_step_rotated_away_while_being_read_is_read_again_not_called_unreadable(
        tmp_path, monkeypatch, caplog):
    config, state, _ = _saved_state(tmp_path, jax.devices(), steps=(3,))
    writer, saved = _rotate_while_reading(monkeypatch, tmp_path, config, state, times=1)
    with caplog.at_level(logging.WARNING):
        _, step = checkpoints.restore_model(config, str(tmp_path))
    assert saved == [4] and step == 4  # step 3 vanished mid-read: the new listing's newest
    assert "unreadable" not in caplog.text and "predates" not in caplog.text
    # A step asked for by number: it was removed, which is not damage either.
    _rotate_while_reading(monkeypatch, tmp_path, config, state, times=1)
    with pytest.raises(FileNotFoundError, match=r"step 4 in .* was removed while being read "
                                                 r"\(a running training.*available steps now: "
                                                 r"\[5\]"):
        checkpoints.restore_model(config, str(tmp_path), step=4)
    writer.close()
    assert os.listdir(tmp_path / "checkpoints") == ["5"]  # nothing moved, nothing damaged


def test_checkpoints_rotating_faster_than_they_are_read_never_advise_moving_them(
        tmp_path, monkeypatch):
    config, state, _ = _saved_state(tmp_path, jax.devices(), steps=(3,))
    monkeypatch.setattr(checkpoints, "MAX_RELISTINGS", 3)
    writer, _ = _rotate_while_reading(monkeypatch, tmp_path, config, state, times=100)
    with pytest.raises(checkpoints.UnreadableCheckpointError,
                       match="changed 3 times while being read: a running training") as info:
        checkpoints.restore_model(config, str(tmp_path))
    writer.close()
    assert "move the checkpoints away" not in str(info.value)


@pytest.mark.slow
def test_resume_past_an_unreadable_step_keeps_it_aside_and_saves_that_step_anew(tmp_path, caplog):
    config = demo_config(steps=4)  # saves steps 2 and 4
    train_and_evaluate(config, str(tmp_path))
    damaged = _truncate_array_files(tmp_path / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING):
        state = train_and_evaluate(demo_config(steps=6), str(tmp_path))
    assert int(state.step) == 6
    assert "checkpoints/4 is unreadable" in caplog.text and "resumed from" not in caplog.text
    aside = tmp_path / "unreadable_checkpoints" / "4"
    assert {name: os.path.getsize(aside / name) for name in damaged} == damaged  # kept as it was
    saved = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=2, keep=3,
                                       read_only=True)
    assert saved.all_steps() == [2, 4, 6]  # step 4 saved anew by the resumed run
    saved.close()
    model, step = checkpoints.restore_model(config, str(tmp_path), step=4)
    assert step == 4


# ----------------------------------------------------------------------------- full disk

def test_a_full_disk_during_a_save_is_one_error_and_keeps_the_saved_steps(
        tmp_path, monkeypatch, caplog):
    from orbax.checkpoint._src.serialization import serialization
    config, state, _ = _saved_state(tmp_path, jax.devices(), steps=(3,))
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1,
                                            keep=1, asynchronous=True,
                                            network=checkpoints.network_config(config.model))

    async def disk_full(*args, **kwargs):  # what TensorStore raises in Orbax's writer threads
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.encoder.0.conv.kernel" in '
                         'OCDBT database: Failed to write 1309963 bytes to file 9: No space left '
                         "on device [os_error_code='28']")

    monkeypatch.setattr(serialization, "async_serialize_from_host", disk_full)
    with caplog.at_level(logging.INFO), pytest.raises(
            OSError, match=r"^disk full: saving the checkpoint of step 4 into .*checkpoints failed "
                           r"\(the disk mounted at /\S* has .* free\); the last good checkpoint "
                           r"is step 3\. Free some space and run the same command again") as e:
        checkpointer.save(4, model=state.model_item(), train=state.train_item(), data_state={})
        checkpointer.wait()
    monkeypatch.undo()
    assert "\n" not in str(e.value)
    # Orbax's per-thread reports of this failure are hidden (records of other tests' leftover
    # tasks, collected now, may carry tracebacks of their own: not this test's concern).
    assert not [r for r in caplog.records if "No space left" in r.getMessage()
                or (r.exc_info and "No space left" in str(r.exc_info[1]))]
    assert [name for name in os.listdir(tmp_path / "checkpoints") if name.isdigit()] == ["3"]
    _, step = checkpoints.restore_model(config, str(tmp_path))
    assert step == 3


# ----------------------------------------------------------------------------- non-finite state

def test_non_finite_state_is_never_saved(tmp_path):
    config, state, _ = _saved_state(tmp_path, jax.devices(), steps=(3,))

    def poison(path, x):  # one NaN in one kernel
        name = checkpoints.path_name(path)
        if not name.startswith("encoder/1/conv/kernel"):
            return x
        poisoned = np.array(x)
        poisoned[0, 0, 0, 0] = np.nan
        return jax.device_put(poisoned, x.sharding)

    params = jax.tree_util.tree_map_with_path(poison, state.params)
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=1,
                                              keep=3, asynchronous=False)
    with pytest.raises(FloatingPointError,
                       match=r"state at step 4 has non-finite values in 1 arrays "
                             r"\(model/params/encoder/1/conv/kernel.*not saved.*"
                             r"last good checkpoint is step 3"):
        checkpointer.save(4, model={"params": params, "batch_stats": state.batch_stats},
                          train=state.train_item(), data_state={})
    checkpointer.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]


@pytest.mark.slow
def test_huge_learning_rate_stops_before_saving_a_non_finite_state(tmp_path):
    config = demo_config(steps=3)
    config.train.learning_rate = 1e39
    config.train.checkpoint_every_steps = 1
    # The loss of step 1 is computed before its update, so only the state check can catch it.
    with pytest.raises(checkpoints.NonFiniteStateError,
                       match=r"state at step 1 has non-finite values.*No checkpoint was saved"):
        train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == []
