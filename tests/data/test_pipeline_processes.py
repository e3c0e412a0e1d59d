"""The pipeline with worker processes: the thread pipeline's batches, exact resume, skipped
files counted, no child process left after close, a stuck worker not holding the others back,
a dead worker or Ctrl-C ending the run."""
import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from pconv_jax.data import pipeline, shared_batches
from pconv_jax.training import checkpoints
from tests.helpers.data import data_config, equal_batches, make_pipeline, solid_folder
from tests.helpers.training import REPO, TRAIN_PY_TINY


def _children(before=frozenset()):
    """Child processes started since `before` (pids), without multiprocessing's resource
    tracker, which lives until the parent exits."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.slow
def test_worker_processes_give_the_thread_pipelines_batches(tmp_path):
    # Other tests of the session may own children (e.g. the web app's browser): not ours.
    others = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    folder = solid_folder(tmp_path, range(10, 250, 20))  # 12 images
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    config = data_config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    runs = {}
    for processes in (0, 2):
        config.data.worker_processes = processes
        run = make_pipeline(config, seed=3)
        runs[processes] = [next(run) for _ in range(7)]  # crosses an epoch boundary
        if processes:
            assert _children(others)
            state = run.get_state()
            assert run.skipped_files == 1  # met in a worker process, counted here
        run.close()
        assert not _children(others)
    assert all(set(b) == {"image", "mask"} for b in runs[2])
    assert equal_batches(runs[0], runs[2])

    # Resume mid-epoch with worker processes: the next batches of an uninterrupted run.
    resumed = make_pipeline(config, seed=3)
    resumed.set_state({"position": 16})
    assert equal_batches(runs[0][4:], [next(resumed) for _ in range(3)])
    resumed.close()
    assert state == {"position": 28} and not _children(others)
    assert np.all(runs[2][0]["mask"] <= 1)


@pytest.mark.slow
def test_batches_are_copied_out_of_their_slots_off_the_calling_thread(monkeypatch):
    # The training loop's thread only dispatches steps: the copy-out (30 ms for 384 images of
    # 256²) happens in the pipeline's collector thread while the device computes.
    threads = []
    take = shared_batches.BatchWorkers.__next__

    def recording_take(self):
        threads.append(threading.current_thread())
        return take(self)

    monkeypatch.setattr(shared_batches.BatchWorkers, "__next__", recording_take)
    config = data_config("demo", size=16, batch=4)
    config.data.worker_processes = 2
    run = make_pipeline(config, seed=0)
    batches = [next(run) for _ in range(3)]
    run.close()
    assert len(threads) >= 3 and threading.main_thread() not in threads
    assert all(b["image"].shape == (4, 16, 16, 3) for b in batches)


@pytest.mark.slow
def test_a_killed_worker_process_ends_the_run_with_an_error():
    others = frozenset(p.pid for p in psutil.Process().children(recursive=True))
    config = data_config("demo", size=16, batch=4)
    config.data.worker_processes = 2
    run = make_pipeline(config, seed=0)
    next(run)
    os.kill(_children(others)[0].pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer

    def drain():  # the other worker's batches, then the dead one's turn
        for _ in range(100):
            next(run)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(ChildProcessError, match="input worker process died"):
            pool.submit(drain).result(timeout=60)  # an error, not a hang
    run.close()
    assert not _children(others)


@pytest.mark.slow
def test_ctrl_c_stops_train_py_and_its_worker_processes(tmp_path):
    work = tmp_path / "work"
    # A session of its own: Ctrl-C in a terminal signals the whole foreground process group.
    process = subprocess.Popen([sys.executable, "train.py", *TRAIN_PY_TINY, f"--workdir={work}",
                                "--config.data.worker_processes=2"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    first = work / "checkpoints" / "2"
    deadline = time.time() + 300
    while not first.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.is_dir()
    children = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)
    start = time.time()
    try:
        log = process.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.time() - start < 30, log[-3000:]
    assert process.returncode == -signal.SIGINT, log[-3000:]  # what an interrupted process reports
    assert "Ctrl-C: stopped before step" in log and "worker process died" not in log, log[-3000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
    # No final save, but every checkpoint written before Ctrl-C is kept and complete.
    saved = checkpoints.Checkpointer(str(work / "checkpoints"), save_every_steps=2, keep=3,
                                     read_only=True)
    assert saved.latest_step() >= 2
    saved.close()


class _HeldExample:
    """Position p -> an example whose bytes say p; in a worker process, writes `made_<p>` in
    `folder`, and the positions in `held` wait until `folder` holds `release`."""

    def __init__(self, folder, held):
        self.folder, self.held = str(folder), held

    def __call__(self, position):
        if multiprocessing.parent_process() is not None:  # (the parent reads the layout)
            release = os.path.join(self.folder, "release")
            while position in self.held and not os.path.exists(release):
                time.sleep(0.01)
            with open(os.path.join(self.folder, f"made_{position}"), "w"):
                pass
        return {"image": np.full((4, 4, 3), position, np.uint8),
                "mask": np.ones((4, 4, 1), np.uint8)}


@pytest.mark.slow
def test_a_stuck_worker_process_does_not_hold_the_others_back(tmp_path):
    # The worker making batch 2 is stuck (another process has its core): the other worker goes
    # on with batches 3, 4, 5, ..., not only with its own share of them (3, 5, 7, ...).
    run = pipeline.TrainPipeline(_HeldExample(tmp_path, held=range(4, 6)), 2, workers=1,
                                 prefetch=1, processes=2)
    batches = [next(run), next(run)]
    third = concurrent.futures.ThreadPoolExecutor(1)
    batch = third.submit(next, run)
    try:
        deadline = time.time() + 120  # (guards against a hang only)
        while not {f"made_{p}" for p in range(6, 12)} <= set(os.listdir(tmp_path)):
            assert time.time() < deadline, sorted(os.listdir(tmp_path))
            time.sleep(0.05)
        assert not batch.done()
        (tmp_path / "release").touch()
        batches += [batch.result(timeout=60)] + [next(run) for _ in range(4)]
        assert [b["image"][:, 0, 0, 0].tolist() for b in batches] == [
            [0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13]]
    finally:
        (tmp_path / "release").touch()
        third.shutdown()
        run.close()
