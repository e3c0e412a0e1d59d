"""Shared-memory slots that input worker processes stack their batches into, reused in turn.

A fresh shared-memory block per batch (grain's `SharedMemoryArray`) makes the kernel allocate
and zero every page of every batch, and the worker pay a page fault for each (several times the
cost of stacking into reused memory; figures in docs/data.md). Here each worker owns a few
slots, allocated once by the parent, and fills them in turn; only the (worker, slot) pair
travels through grain's queue. The parent copies a batch out of its slot and hands the slot
back.

Hand-back: each worker has a FIFO holding one byte per free slot. A worker takes a byte before
it fills its next slot, blocking while all are in use; the parent writes one once it has copied
a batch out. A worker's batches are consumed in the order it makes them, so the slot it fills
next is always the one freed first. The pipe's system calls order the copy before the reuse on
any processor. When the parent closes the FIFOs (it stops the workers, or dies), a waiting worker
reads their end and stops.

The parent creates the blocks and removes them in `close` (Python's resource tracker removes
them if the parent is killed).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from multiprocessing import shared_memory

import numpy as np

_SHM = "/dev/shm"  # where Linux keeps shared memory (a tmpfs: 64 MB by default in Docker)
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # field -> (batch shape, dtype)


class SharedBatchSlots:
    """`slots` batch slots per worker process; picklable (workers attach on first use).

    Args:
      workers: number of worker processes.
      slots: slots per worker: the batches it may have made ahead of the parent.
      layout: field -> (shape of the whole batch, dtype), e.g. {'image': ((16, 256, 256, 3),
        uint8)}.
    """

    def __init__(self, workers: int, slots: int, layout: Layout):
        self.layout = {key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype)
                       in layout.items()}
        self.slots = slots
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.layout.values())
        _check_room(workers * slots * size)
        self._blocks = [[shared_memory.SharedMemory(create=True, size=size)
                         for _ in range(slots)] for _ in range(workers)]
        self.names = [[block.name for block in row] for row in self._blocks]
        self._dir = tempfile.mkdtemp(prefix="pconv_jax_slots_")
        self.fifos = [os.path.join(self._dir, f"worker_{w}") for w in range(workers)]
        self._fds, self._fds_lock = [], threading.Lock()
        for path in self.fifos:
            os.mkfifo(path, 0o600)
            fd = os.open(path, os.O_RDWR)  # read and write ends: opening never blocks
            os.write(fd, b"\0" * slots)  # every slot starts free
            self._fds.append(fd)
        self._attached = None  # in a worker process: (its blocks, its FIFO's read end)
        self._made = 0  # in a worker process: batches made so far

    def __getstate__(self) -> dict:
        return {"layout": self.layout, "slots": self.slots, "names": self.names,
                "fifos": self.fifos}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _blocks=None, _fds=[], _dir=None, _attached=None, _made=0)

    def views(self, block: shared_memory.SharedMemory) -> dict[str, np.ndarray]:
        """The batch fields laid out in a block."""
        fields, offset = {}, 0
        for key, (shape, dtype) in self.layout.items():
            fields[key] = np.ndarray(shape, dtype, buffer=block.buf, offset=offset)
            offset += math.prod(shape) * dtype.itemsize
        return fields

    def put(self, worker: int, fields: dict[str, list[np.ndarray]]) -> int:
        """In worker process `worker`: waits for its next slot to be free, stacks each field's
        examples into it, and returns the slot's index."""
        if self._attached is None:
            blocks = [shared_memory.SharedMemory(name) for name in self.names[worker]]
            # Non-blocking open: a FIFO the parent has already closed reads as its end.
            fd = os.open(self.fifos[worker], os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            self._attached = (blocks, fd)
        blocks, fd = self._attached
        if not os.read(fd, 1):
            raise EOFError("the process that reads the batches has gone")
        slot = self._made % self.slots
        self._made += 1
        for key, out in self.views(blocks[slot]).items():
            np.stack(fields[key], out=out)
        return slot

    def take(self, worker: int, slot: int) -> dict[str, np.ndarray]:
        """In the parent: a copy of the batch in (worker, slot); the slot is free again."""
        batch = {key: view.copy() for key, view in self.views(self._blocks[worker][slot]).items()}
        with self._fds_lock:  # (another thread may be closing them: never write to a reused fd)
            if self._fds:
                os.write(self._fds[worker], b"\0")
        return batch

    def stop_workers(self) -> None:
        """In the parent: closes the FIFOs' write ends, so that a worker waiting for a free
        slot reads their end and stops."""
        with self._fds_lock:
            for fd in self._fds:
                os.close(fd)
            self._fds = []

    def close(self) -> None:
        """In the parent, once the workers are stopped: removes the blocks and the FIFOs."""
        self.stop_workers()
        for block in (block for row in self._blocks or [] for block in row):
            block.close()
            try:
                block.unlink()
            except FileNotFoundError:
                pass
        self._blocks = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _check_room(size: int) -> None:
    """Raises MemoryError if the shared memory has less than `size` bytes free: writing past a
    full tmpfs would kill the worker processes with SIGBUS instead."""
    if not os.path.isdir(_SHM):
        return
    free = shutil.disk_usage(_SHM).free
    if size > free:
        raise MemoryError(
            f"the input worker processes need {size / 2**20:.0f} MB of shared memory for their "
            f"batches but {_SHM} has {free / 2**20:.0f} MB free: lower "
            f"config.data.worker_processes or config.data.prefetch (each worker keeps prefetch "
            f"+ 3 batches), or give the container more (docker run --shm-size=...)")
