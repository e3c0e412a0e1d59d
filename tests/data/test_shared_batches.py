"""The batch worker processes: batches arrive whole and in order, a free worker takes the next
batch while another is stuck, a slot is reused only once the parent copied its batch out,
a worker's error reaches the parent, closing stops the workers and removes the blocks."""

import os
import threading
import time
import types
from multiprocessing import shared_memory

import numpy as np
import pytest

from pconv_jax.data import shared_batches
from pconv_jax.data.shared_batches import BatchWorkers

LAYOUT = {"image": ((2, 4, 4, 3), np.uint8), "mask": ((2, 4, 4, 1), np.uint8)}


class MarkedBatches:
    """Batch b: two examples whose every byte says b; writes `made_<b>` in `folder` once made.
    A batch listed in `held` waits until `folder` holds `release`. Picklable."""

    def __init__(self, folder, held=(), fail=None):
        self.folder, self.held, self.fail = str(folder), tuple(held), fail

    def __call__(self, index):
        while index in self.held and not os.path.exists(os.path.join(self.folder, "release")):
            time.sleep(0.01)
        if index == self.fail:
            raise ValueError(f"unreadable image in batch {index}")
        with open(os.path.join(self.folder, f"made_{index}"), "w"):
            pass
        return ({"image": [np.full((4, 4, 3), index, np.uint8)] * 2,
                 "mask": [np.full((4, 4, 1), index + 100, np.uint8)] * 2}, f"sent {index}")


def _made(folder):
    return {int(name[5:]) for name in os.listdir(folder) if name.startswith("made_")}


def _wait_for(condition, timeout=120):
    """Waits until `condition()` holds (the timeout only guards against a hang)."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_batches_come_whole_and_in_order(tmp_path):
    workers = BatchWorkers(MarkedBatches(tmp_path), workers=2, slots=4, layout=LAYOUT)
    try:
        for index in range(9):
            batch, sent = next(workers)
            assert np.all(batch["image"] == index) and np.all(batch["mask"] == index + 100)
            assert batch["image"].shape == (2, 4, 4, 3) and batch["image"].dtype == np.uint8
            assert sent == f"sent {index}"
    finally:
        workers.close()


def test_free_workers_fill_every_free_slot_while_one_is_stuck(tmp_path):
    # Batch 0's worker is stuck (another process has its core); the other worker makes the
    # batches 1, 2, 3, ... into every other slot, not only every other batch.
    workers = BatchWorkers(MarkedBatches(tmp_path, held=[0]), workers=2, slots=5, layout=LAYOUT)
    try:
        _wait_for(lambda: _made(tmp_path) == {1, 2, 3, 4})
        time.sleep(0.3)
        assert _made(tmp_path) == {1, 2, 3, 4}  # no slot left: batch 5 waits for one
        (tmp_path / "release").touch()
        assert [next(workers)[1] for _ in range(7)] == [f"sent {i}" for i in range(7)]
    finally:
        workers.close()


def test_a_slot_is_reused_only_after_the_parent_took_its_batch(tmp_path):
    workers = BatchWorkers(MarkedBatches(tmp_path), workers=1, slots=2, layout=LAYOUT)
    try:
        _wait_for(lambda: _made(tmp_path) == {0, 1})
        time.sleep(0.3)
        assert _made(tmp_path) == {0, 1}  # both slots hold batches the parent has not taken
        first, _ = next(workers)
        _wait_for(lambda: 2 in _made(tmp_path))  # ... and slot 0 gets batch 2 once taken
        assert np.all(first["image"] == 0)  # a copy: intact
        assert [int(next(workers)[0]["image"][0, 0, 0, 0]) for _ in range(3)] == [1, 2, 3]
    finally:
        workers.close()


def test_an_error_in_a_worker_is_raised_in_the_parent(tmp_path):
    workers = BatchWorkers(MarkedBatches(tmp_path, fail=2), workers=2, slots=2, layout=LAYOUT)
    try:
        assert [next(workers)[1] for _ in range(2)] == ["sent 0", "sent 1"]
        with pytest.raises(ValueError, match="unreadable image in batch 2") as raised:
            next(workers)
        assert "in input worker process" in str(raised.value.__cause__)  # with its traceback
    finally:
        workers.close()


def test_close_stops_a_waiting_reader_and_the_workers_and_removes_the_blocks(tmp_path):
    workers = BatchWorkers(MarkedBatches(tmp_path, held=[0]), workers=2, slots=2, layout=LAYOUT)
    processes = list(workers._processes)
    names = [block.name for block in workers._blocks]
    errors = []

    def read():  # the pipeline's collector thread, waiting for batch 0
        try:
            next(workers)
        except EOFError as error:
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    workers.stop_workers()
    reader.join(timeout=60)
    assert not reader.is_alive() and len(errors) == 1
    assert all(process.exitcode is not None for process in processes)  # stopped
    workers.close()
    assert not os.path.exists(workers._dir)
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name)


def test_fewer_slots_than_workers_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="3 workers need at least as many slots, got 2"):
        BatchWorkers(MarkedBatches(tmp_path), workers=3, slots=2, layout=LAYOUT)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="Linux's shared memory folder")
def test_too_little_shared_memory_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shared_batches.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(free=2**20))
    with pytest.raises(MemoryError, match=r"worker_processes or config.data.prefetch.*shm-size"):
        BatchWorkers(MarkedBatches(tmp_path), workers=8, slots=18,
                     layout={"image": ((16, 256, 256, 3), np.uint8)})
