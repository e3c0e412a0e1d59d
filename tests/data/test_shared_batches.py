"""The worker processes' batch slots: each batch arrives whole, a slot is reused only once the
parent has copied its batch out, closing wakes a waiting worker and removes the blocks."""

import os
import pickle
import threading
import types
from multiprocessing import shared_memory

import numpy as np
import pytest

from pconv_jax.data import shared_batches
from pconv_jax.data.shared_batches import SharedBatchSlots

LAYOUT = {"image": ((2, 4, 4, 3), np.uint8), "mask": ((2, 4, 4, 1), np.uint8)}


def _examples(value: int) -> dict[str, list[np.ndarray]]:
    """Two examples whose every byte says which batch they belong to."""
    return {"image": [np.full((4, 4, 3), value, np.uint8)] * 2,
            "mask": [np.full((4, 4, 1), value + 100, np.uint8)] * 2}


def _worker_side(slots: SharedBatchSlots) -> SharedBatchSlots:
    return pickle.loads(pickle.dumps(slots))  # what grain hands a worker process


def test_a_slot_is_reused_only_after_the_parent_took_its_batch():
    slots = SharedBatchSlots(workers=2, slots=2, layout=LAYOUT)
    worker = _worker_side(slots)
    try:
        assert [worker.put(1, _examples(v)) for v in (1, 2)] == [0, 1]
        third = threading.Thread(target=worker.put, args=(1, _examples(3)))
        third.start()
        third.join(timeout=0.5)
        assert third.is_alive()  # both slots hold batches the parent has not taken: it waits
        first = slots.take(1, 0)
        third.join(timeout=10)
        assert not third.is_alive()  # ... and fills slot 0 once its batch was taken
        assert np.all(first["image"] == 1) and np.all(first["mask"] == 101)  # a copy: intact
        assert first["image"].shape == (2, 4, 4, 3) and first["image"].dtype == np.uint8
        assert np.all(slots.take(1, 1)["image"] == 2)
        assert np.all(slots.take(1, 0)["image"] == 3)
        assert _worker_side(slots).put(0, _examples(4)) == 0  # worker 0's slots are its own
        assert np.all(slots.take(0, 0)["mask"] == 104)
    finally:
        slots.close()


def test_close_wakes_a_waiting_worker_and_removes_the_blocks():
    slots = SharedBatchSlots(workers=1, slots=1, layout=LAYOUT)
    names = [name for row in slots.names for name in row]
    worker = _worker_side(slots)
    worker.put(0, _examples(1))
    errors = []

    def put():
        try:
            worker.put(0, _examples(2))
        except EOFError as err:
            errors.append(err)

    waiting = threading.Thread(target=put)
    waiting.start()
    slots.close()
    waiting.join(timeout=10)
    assert not waiting.is_alive() and len(errors) == 1
    assert not os.path.exists(os.path.dirname(slots.fifos[0]))
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="Linux's shared memory folder")
def test_too_little_shared_memory_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shared_batches.shutil, "disk_usage",
                        lambda path: types.SimpleNamespace(free=2**20))
    with pytest.raises(MemoryError, match=r"worker_processes or config.data.prefetch.*shm-size"):
        SharedBatchSlots(workers=8, slots=5, layout={"image": ((16, 256, 256, 3), np.uint8)})


def test_a_worker_starting_after_close_stops_instead_of_waiting():
    slots = SharedBatchSlots(workers=1, slots=1, layout=LAYOUT)
    worker = _worker_side(slots)
    slots.stop_workers()  # e.g. the pipeline closed while the worker was still starting
    with pytest.raises(EOFError):
        worker.put(0, _examples(1))
    slots.close()
