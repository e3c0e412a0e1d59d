"""One writer per workdir: a lock file per process, and an atomic `config.json`.

A run holds `<workdir>/.lock.<process_index>` with `fcntl.flock` for its whole life; the file
records who holds it (pid, host, start time). A second run into the same workdir (and process
index) fails at once with an error naming the holder. The kernel releases a flock when its
process dies, so the lock of a killed run (`kill -9`, a crash, a lost node) is never stuck: the
next run takes it over and says so. The file is emptied, never deleted, on release (deleting a
locked file lets two runs lock two different files of the same name).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from types import TracebackType

from absl import logging

from pconv_jax import files
from pconv_jax.files import write_text_atomically  # noqa: F401  (re-exported for callers)


class WorkdirBusyError(OSError):
    """Another live run holds the workdir's lock."""


def lock_path(workdir: str, process_index: int) -> str:
    return os.path.join(workdir, f".lock.{process_index}")


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that did not record itself"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": "?", "host": "?", "started": f"? (unreadable lock file: {text[:60]!r})"}
    return holder if isinstance(holder, dict) else {}


class WorkdirLock:
    """Holds `<workdir>/.lock.<process_index>` from `acquire()` to `release()` (or a `with`)."""

    def __init__(self, workdir: str, process_index: int = 0):
        self.path = lock_path(workdir, process_index)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock; WorkdirBusyError naming the holder if a live run has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirBusyError(
                f"the workdir {os.path.dirname(self.path)!r} is in use by another run "
                f"({_describe(holder)}; lock file {self.path}): wait for it to end or stop it, "
                f"or pass another --workdir") from None
        except OSError as e:
            os.close(fd)
            raise OSError(f"cannot lock {self.path} ({e.strerror}): the workdir's filesystem may "
                          f"not support file locks; use a workdir on a local disk") from e
        stale = _read_holder(fd)
        if stale:  # its holder died without releasing: the kernel dropped its flock
            logging.warning("taking over the lock of %s in %s: that run ended without "
                            "releasing it (killed or crashed)", _describe(stale), self.path)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # empty = released cleanly, not a stale lock
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def prepare_workdir(workdir: str, writing: str = "to") -> str:
    """Creates `workdir` (absolute path returned); a clear OSError if files cannot be written
    there. `writing` completes "cannot write ... the workdir" in that error."""
    workdir = os.path.abspath(workdir)
    # Host and pid: processes of several hosts may probe one shared workdir at once.
    probe = os.path.join(workdir, f".write_test_{socket.gethostname()}_{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
    except OSError as e:
        if files.is_disk_full(e):
            raise files.disk_full_error(workdir, f"{writing} the workdir {workdir!r}") from e
        raise OSError(f"cannot write {writing} the workdir {workdir!r} ({e.strerror}); pass a "
                      f"writable --workdir") from e
    finally:
        with contextlib.suppress(OSError):  # also when the write failed after creating it
            os.remove(probe)
    return workdir
