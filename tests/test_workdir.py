"""One run per workdir: the lock (two real processes, a killed holder, a stale file) and the
atomic config.json."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from test_train_helpers import REPO, demo_config

from pconv_jax.training import workdir as workdir_lib
from pconv_jax.training.loop import train_and_evaluate

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


def test_write_text_atomically(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    workdir_lib.write_text_atomically(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
