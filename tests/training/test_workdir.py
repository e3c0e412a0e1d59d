"""One run per workdir: the lock (two real processes, a killed holder, a stale file) and the
atomic config.json."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pconv_jax.training import workdir as workdir_lib
from pconv_jax.training.loop import train_and_evaluate
from tests.helpers.training import REPO, demo_config

# Holds the lock of argv[1] (process index 0) until killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pconv_jax.training.workdir import WorkdirLock
    WorkdirLock(sys.argv[1], 0).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/work; killed (SIGKILL) at the end."""
    work = tmp_path / "work"
    work.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.strip() == "locked", process.stderr.read()
    yield work, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_second_run_fails_naming_the_holder_then_takes_over_once_it_is_killed(holder, caplog):
    work, process = holder
    lock = workdir_lib.WorkdirLock(str(work), 0)
    with pytest.raises(workdir_lib.WorkdirBusyError,
                       match=rf"in use by another run \(pid {process.pid} on host .*started"):
        lock.acquire()
    # Another process index is another writer (a multi-host run): not blocked.
    with workdir_lib.WorkdirLock(str(work), 1):
        pass

    process.send_signal(signal.SIGKILL)  # dies without releasing: the kernel drops its flock
    process.wait()
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    try:
        assert f"taking over the lock of pid {process.pid}" in caplog.text
        recorded = json.loads((work / ".lock.0").read_text())
        assert recorded["pid"] == os.getpid()
    finally:
        lock.release()
    assert (work / ".lock.0").read_text() == ""  # released cleanly: not stale


def test_stale_lock_file_is_taken_over_and_a_clean_release_is_not_stale(tmp_path, caplog):
    (tmp_path / ".lock.0").write_text(json.dumps(
        {"pid": 2**22 + 17, "host": "gone-host", "started": "2026-01-01T00:00:00+00:00"}))
    with caplog.at_level(logging.WARNING):
        with workdir_lib.WorkdirLock(str(tmp_path), 0):
            pass
    assert "taking over the lock of pid 4194321 on host gone-host" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with workdir_lib.WorkdirLock(str(tmp_path), 0):
            pass
    assert "taking over" not in caplog.text


def test_training_into_a_busy_workdir_fails_at_once_and_writes_nothing(holder):
    work, process = holder
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {process.pid}"):
        train_and_evaluate(demo_config(), str(work))
    assert sorted(os.listdir(work)) == [".lock.0"]  # no config.json, checkpoints or logs
    assert process.poll() is None  # the holder runs on


# ----------------------------------------------------------------------------- config.json

@pytest.mark.parametrize("text,message", [
    ("null", r"config.json holds null instead of an object of config sections"),
    ("[]", r"config.json holds \[\] instead of an object"),
    ('{"data": {}}', r"config.json holds no 'model' section"),
    ('{"model": null}', r"config.json: config.model must be a section of settings"),
    ('{"model": {"dtype": "float8"}}', r"config.json: config.model.dtype must be one of "
                                       r"'float32', 'bfloat16', got 'float8'"),
    ('{"model": {"depth": "4"}}', r"config.json: config.model.depth must be an integer, got '4'"),
    ('{"model": {"depth": 4', r"config.json is not a valid config.json \(Expecting"),
    ('{"model": {}, "train": {"learning_rate": -1}}',
     r"config.json: config.train.learning_rate must be a number > 0, got -1"),
])
def test_a_damaged_workdir_config_is_one_error_naming_the_file_and_key(tmp_path, text, message):
    from pconv_jax import config as config_lib
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        config_lib.load_workdir_config(str(tmp_path))
    assert str(tmp_path / "config.json") in str(err.value)


def test_a_workdir_config_takes_defaults_for_missing_settings_and_ignores_unknown(tmp_path,
                                                                                 caplog):
    from pconv_jax import config as config_lib
    (tmp_path / "config.json").write_text('{"model": {"depth": 4, "retired": 1}}')
    with caplog.at_level(logging.WARNING):
        config = config_lib.load_workdir_config(str(tmp_path))
    assert config.model.depth == 4 and config.model.base_width == 64
    assert "ignored: model.retired" in caplog.text


def _saved(tmp_path, **changes):
    """A config.json of the demo config with `changes` ('section.key': value) applied."""
    config = demo_config()
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    return config


def test_resume_with_changed_data_or_seed_is_refused_unless_allowed(tmp_path):
    _saved(tmp_path)
    before = (tmp_path / "config.json").read_text()
    for key, value in [("seed", 1), ("data.batch_size", 16), ("data.image_size", 64),
                       ("masks.hole_ratio_max", 0.5), ("stage", "finetune")]:
        config = demo_config()
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
        history = workdir_lib.ConfigHistory(str(tmp_path))
        with pytest.raises(ValueError, match=rf"at step 6 trained with other settings: {key}: "
                                             rf".*--allow_config_change"):
            history.check(config, 6)
    assert (tmp_path / "config.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json"]

    config = demo_config()
    config.seed = 1
    history = workdir_lib.ConfigHistory(str(tmp_path), allow_changes=True)
    history.check(config, 6)
    history.record()
    assert (tmp_path / "config.6.json").read_text() == before  # the earlier run's settings
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


def test_resume_with_other_changes_warns_and_keeps_every_run(tmp_path, caplog):
    _saved(tmp_path)
    first = (tmp_path / "config.json").read_text()
    for step, steps in [(4, 8), (8, 12)]:
        config = demo_config(steps=steps)
        config.train.learning_rate = 1e-3
        history = workdir_lib.ConfigHistory(str(tmp_path))
        with caplog.at_level(logging.WARNING):
            history.check(config, step)
        history.record()
    assert ("resuming at step 4 with changed settings: train.eval_every_steps: 4 -> 8; "
            "train.learning_rate: 0.002 -> 0.001; train.num_steps: 4 -> 8") in caplog.text
    assert (tmp_path / "config.4.json").read_text() == first
    assert json.loads((tmp_path / "config.8.json").read_text())["train"]["num_steps"] == 8
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 12

    # The same settings again: nothing new kept; a second resume at one step keeps both files.
    history = workdir_lib.ConfigHistory(str(tmp_path))
    history.check(config, 12)
    history.record()
    assert sorted(p for p in os.listdir(tmp_path)) == ["config.4.json", "config.8.json",
                                                       "config.json"]
    config.train.num_steps = 20
    for _ in range(2):
        history = workdir_lib.ConfigHistory(str(tmp_path))
        history.check(config, 4)
        history.record()
    assert {"config.4.json", "config.4.2.json"} <= set(os.listdir(tmp_path))


def test_a_damaged_earlier_config_json_is_kept_not_compared(tmp_path):
    (tmp_path / "config.json").write_text('{"model": ')
    history = workdir_lib.ConfigHistory(str(tmp_path))
    history.check(demo_config(), 2)
    history.record()
    assert (tmp_path / "config.2.json").read_text() == '{"model": '
    assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 3


def test_a_failed_start_removes_only_the_folders_it_created(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep").write_text("")
    for workdir in (tmp_path / "new" / "deeper" / "work", existing):
        guard = workdir_lib.CleanupIfStartFails(str(workdir), str(workdir / "checkpoints"))
        with pytest.raises(RuntimeError), guard:
            (workdir / "checkpoints").mkdir(parents=True)
            raise RuntimeError("failed start")
    assert sorted(os.listdir(tmp_path)) == ["existing"]
    assert sorted(os.listdir(existing)) == ["keep"]  # its new checkpoints folder went
    started = workdir_lib.CleanupIfStartFails(str(tmp_path / "run"))
    with pytest.raises(RuntimeError), started:
        (tmp_path / "run").mkdir()
        started.started()
        raise RuntimeError("failed after the start")
    assert (tmp_path / "run").is_dir()
