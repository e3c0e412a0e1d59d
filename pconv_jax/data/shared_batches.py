"""Worker processes that make whole batches into shared-memory slots, handed back in order.

Work goes to whichever worker is free: the parent writes one task (slot, batch index) per free
slot, in index order, to a FIFO that all workers read; a worker takes the next task, makes that
batch, stacks it into the slot and sends (index, slot) back through its own pipe. The parent
hands the batches on in index order, copying each out of its slot, then gives the slot the next
index. So a worker slowed down by another process on its core (a GPU host is always shared:
the training process's threads, TensorBoard, a checkpoint writer) makes fewer batches instead of
holding the others back; with a fixed share per worker (batch b to worker b mod N, as grain's
`mp_prefetch` deals them) the whole pipeline runs at N times its slowest worker's pace.

There are `slots` shared-memory blocks in all, allocated once: a fresh block per batch (grain's
`SharedMemoryArray`) makes the kernel allocate and zero every page of every batch, several times
the cost of stacking it into reused memory (figures in docs/data.md).
Tasks are written in index order, so the batch the parent waits for is always being made by a
live worker, whatever the others hold: the hand-off cannot deadlock.

A worker stops when the task FIFO has no writer left (the parent closed it, or died) and when
its result pipe has no reader; a worker that dies or raises ends the parent's wait with an
error. The parent removes the blocks in `close` (Python's resource tracker removes them if the
parent is killed).
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import struct
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import cloudpickle  # (grain's dependency) sources may hold lambdas
import numpy as np

_SHM = "/dev/shm"  # where Linux keeps shared memory (a tmpfs: 64 MB by default in Docker)
_TASK = struct.Struct("<Iq")  # (slot, batch index): a record far under PIPE_BUF, written whole
Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # field -> (batch shape, dtype)
# Batch index -> (field -> the batch's examples, a small picklable value sent along).
MakeBatch = Callable[[int], tuple[dict[str, list[np.ndarray]], Any]]


class BatchWorkers:
    """`workers` spawned processes making batches 0, 1, 2, ... of `make_batch` into `slots`
    shared-memory slots; `next` returns them in order as (field -> a copy, what
    `make_batch` sent along).

    Args:
      make_batch: batch index -> ({field: its examples}, a picklable value); run in the workers
        (pickled with cloudpickle).
      workers: number of worker processes.
      slots: shared-memory slots in all (>= workers): batches made, or being made, ahead of the
        parent.
      layout: field -> (shape of the whole batch, dtype), e.g. {'image': ((16, 256, 256, 3),
        uint8)}.
      worker_init: called first in each worker process.
    """

    def __init__(self, make_batch: MakeBatch, workers: int, slots: int, layout: Layout,
                 worker_init: Callable[[], None] | None = None):
        if slots < workers:
            raise ValueError(f"{workers} workers need at least as many slots, got {slots}.")
        self.layout = {key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype)
                       in layout.items()}
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.layout.values())
        _check_room(slots * size)
        self._blocks = [shared_memory.SharedMemory(create=True, size=size)
                        for _ in range(slots)]
        self._dir = tempfile.mkdtemp(prefix="pconv_jax_tasks_")
        self._tasks_path = os.path.join(self._dir, "tasks")
        os.mkfifo(self._tasks_path, 0o600)
        self._tasks = os.open(self._tasks_path, os.O_RDWR)  # read and write ends: never blocks
        self._tasks_lock = threading.Lock()  # (stop_workers may close it from another thread)
        self._next = self._assigned = 0  # the next batch to hand on; to assign to a free slot
        self._ready: dict[int, tuple[int, Any]] = {}  # index -> (slot, sent along): made ahead
        self._stopping = False
        self.waited = {"parent": 0.0, "workers": 0.0}  # seconds waiting: for the next batch;
        self._worker_waits: dict[int, float] = {}       # for a task (no free slot), summed
        for slot in range(slots):
            self._assign(slot)
        context = multiprocessing.get_context("spawn")  # (fork is unsafe once JAX runs)
        names = [block.name for block in self._blocks]
        pickled = cloudpickle.dumps((make_batch, worker_init))
        self._results, self._processes = [], []
        for worker in range(workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_work, args=(pickled, worker, self.layout, names, self._tasks_path, send),
                daemon=True, name=f"pconv_jax input worker {worker}")
            process.start()
            send.close()  # the worker holds the only write end: its death reads as an end
            self._results.append(receive)
            self._processes.append(process)

    def _assign(self, slot: int) -> None:
        with self._tasks_lock:
            if self._tasks is not None:
                os.write(self._tasks, _TASK.pack(slot, self._assigned))
        self._assigned += 1

    def __iter__(self) -> BatchWorkers:
        return self

    def __next__(self) -> tuple[dict[str, np.ndarray], Any]:
        start = time.perf_counter()
        while self._next not in self._ready:
            self._receive()
        self.waited["parent"] += time.perf_counter() - start
        slot, sent = self._ready.pop(self._next)
        batch = {key: view.copy() for key, view in self._views(slot).items()}
        self._next += 1
        self._assign(slot)  # after the copy: the pipe's system calls order the two
        return batch, sent

    def get_state(self) -> dict:
        """(For grain's thread prefetch, which asks.) Nothing: the caller keeps the position."""
        return {}

    def _receive(self) -> None:
        """Waits for a result of any worker; raises if one died or failed."""
        sentinels = {process.sentinel: process for process in self._processes}
        for ready in multiprocessing.connection.wait([*self._results, *sentinels]):
            if self._stopping:
                raise EOFError("the input worker processes were stopped")
            if ready in sentinels:
                continue  # reported below
            try:
                worker, index, slot, sent, waited = ready.recv()
            except EOFError:  # a dead worker's pipe: reported below once it is reaped
                continue
            if isinstance(sent, _Failure):
                raise sent.error from RuntimeError(
                    f"in input worker process {worker}:\n{sent.traceback}")
            self._ready[index] = (slot, sent)
            self._worker_waits[worker] = waited
            self.waited["workers"] = sum(self._worker_waits.values())
        for process in self._processes:
            if process.exitcode is not None:
                raise ChildProcessError(
                    f"an input worker process died (exit code {process.exitcode}); if the "
                    f"system ran out of memory, lower config.data.worker_processes or "
                    f"config.data.prefetch")

    def _views(self, slot: int) -> dict[str, np.ndarray]:
        return _views(self._blocks[slot], self.layout)

    def stop_workers(self) -> None:
        """Stops the worker processes; a `next` waiting in another thread raises EOFError."""
        self._stopping = True
        with self._tasks_lock:
            if self._tasks is not None:
                os.close(self._tasks)  # a worker waiting for a task reads the end and stops
                self._tasks = None
        for process in self._processes:
            process.terminate()  # one making a batch stops at once (its batch is not needed)
        for process in self._processes:
            process.join(timeout=10)
            if process.exitcode is None:
                process.kill()
                process.join()

    def close(self) -> None:
        """Once no thread waits in `next`: stops the workers, removes the blocks and the FIFO."""
        self.stop_workers()
        for process in self._processes:
            process.close()
        for receive in self._results:
            receive.close()
        self._processes, self._results = [], []
        for block in self._blocks:
            block.close()
            try:
                block.unlink()
            except FileNotFoundError:
                pass
        self._blocks = []
        shutil.rmtree(self._dir, ignore_errors=True)


class _Failure:
    """What a worker sends instead of a batch when `make_batch` raised."""

    def __init__(self, error: BaseException):
        self.traceback = "".join(traceback.format_exception(error))
        try:
            self.error = pickle.loads(pickle.dumps(error))
        except Exception:  # an exception that does not survive pickling: its text does
            self.error = RuntimeError(f"{type(error).__name__}: {error}")


def _views(block: shared_memory.SharedMemory, layout: Layout) -> dict[str, np.ndarray]:
    """The batch fields laid out in a block."""
    fields, offset = {}, 0
    for key, (shape, dtype) in layout.items():
        fields[key] = np.ndarray(shape, dtype, buffer=block.buf, offset=offset)
        offset += math.prod(shape) * dtype.itemsize
    return fields


def _work(pickled: bytes, worker: int, layout: Layout, names: list[str], tasks_path: str,
          send: multiprocessing.connection.Connection) -> None:
    """A worker process: takes tasks until the parent closes the task FIFO or stops reading."""
    make_batch, worker_init = pickle.loads(pickled)
    if worker_init is not None:
        worker_init()
    blocks = [shared_memory.SharedMemory(name) for name in names]
    # Non-blocking open: a FIFO the parent has already closed reads as its end.
    tasks = os.open(tasks_path, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(tasks, True)
    waited = 0.0  # seconds spent waiting for a task: all slots taken
    while True:
        start = time.perf_counter()
        task = os.read(tasks, _TASK.size)  # one whole record, or b"" once the parent has gone
        waited += time.perf_counter() - start
        if not task:
            return
        slot, index = _TASK.unpack(task)
        try:
            fields, sent = make_batch(index)
            for key, out in _views(blocks[slot], layout).items():
                np.stack(fields[key], out=out)
        except Exception as error:  # sent to the parent, which raises it
            sent = _Failure(error)
        try:
            send.send((worker, index, slot, sent, waited))
        except (BrokenPipeError, ConnectionResetError):  # the parent has gone
            return
        if isinstance(sent, _Failure):
            return


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
            f"config.data.worker_processes or config.data.prefetch (the workers keep 2 × "
            f"worker_processes + prefetch batches), or give the container more "
            f"(docker run --shm-size=...)")
