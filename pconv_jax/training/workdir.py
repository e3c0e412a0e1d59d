"""One writer per workdir: a lock file per process, an atomic `config.json` with the history of
its changes, and no workdir left behind by a failed start.

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
import shutil
import socket
from types import TracebackType

import ml_collections
from absl import logging

from pconv_jax import config as config_lib
from pconv_jax import files


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


# ----------------------------------------------------------------------------- failed starts

def _topmost_missing(path: str) -> str | None:
    """The topmost folder of `path` that does not exist yet (None if `path` exists)."""
    path, top = os.path.abspath(path), None
    while not os.path.lexists(path):
        path, top = os.path.dirname(path), path
    return top


class CleanupIfStartFails:
    """Removes the folders a run creates (workdir, checkpoints folder) if it fails before
    `started()`: a failed start leaves no workdir behind.

    Built before the folders are made; use as a context manager around the run's setup.
    """

    def __init__(self, *folders: str):
        self._new = sorted({top for top in map(_topmost_missing, folders) if top})
        self._started = False

    def started(self) -> None:
        self._started = True

    def __enter__(self) -> CleanupIfStartFails:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or self._started:
            return
        for folder in self._new:
            if os.path.isdir(folder) and not os.path.islink(folder):
                shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- config history

# Settings a resume may not change unless allowed (train.py --allow_config_change): they decide
# which examples, masks and updates the steps see. Network settings are checked by the
# checkpoint itself; every other change is accepted with a warning.
FIXED_ON_RESUME = ("seed", "stage", "data.name", "data.folder", "data.image_size",
                   "data.batch_size", "data.resize_mode", "data.heldout_count",
                   "data.heldout_fraction", "masks.", "train.freeze_encoder_bn")


def config_changes(saved: dict, config: dict) -> dict[str, str]:
    """{key: 'old -> new'} of every setting whose value differs between two flat configs."""
    missing = object()

    def text(value) -> str:
        return "(absent)" if value is missing else repr(value)
    return {key: f"{text(saved.get(key, missing))} -> {text(config.get(key, missing))}"
            for key in sorted(saved.keys() | config.keys())
            if saved.get(key, missing) != config.get(key, missing)}


def fixed_on_resume(key: str) -> bool:
    return any(key == fixed or (fixed.endswith(".") and key.startswith(fixed))
               for fixed in FIXED_ON_RESUME)


class ConfigHistory:
    """`config.json` holds the settings of the latest run; when a resume at step S changes
    them, the earlier file is kept as `config.<S>.json` (the settings of the steps up to S).

    `check(config, step)` before anything is written: refuses (ValueError) a resume that changes
    a FIXED_ON_RESUME setting unless `allow_changes`, warns about the other changes.
    `record()` once the run has started: writes config.json, keeping the earlier one.
    """

    def __init__(self, workdir: str, *, allow_changes: bool = False):
        self.path = os.path.join(workdir, "config.json")
        self.allow_changes = allow_changes
        self._keep_as: str | None = None  # where the earlier config.json goes at `record()`
        self._text = ""

    def check(self, config: ml_collections.ConfigDict, step: int | None) -> None:
        """Compares `config` with config.json when resuming at checkpoint `step` (None: a fresh
        start, nothing to compare)."""
        self._text = config.to_json_best_effort(indent=2)
        if step is None or not os.path.isfile(self.path):
            return
        try:
            saved = config_lib.flat_settings(config_lib.read_config_json(self.path))
        except ValueError as err:  # hand-edited or damaged: kept as it is, not compared
            self._keep_as = self._snapshot_path(step)
            logging.warning("cannot compare the settings with the earlier run's: %s; it is kept "
                            "as %s", err, self._keep_as)
            return
        changes = config_changes(saved, config_lib.flat_settings(config))
        if not changes:
            return
        refused = [f"{key}: {change}" for key, change in changes.items() if fixed_on_resume(key)]
        if refused and not self.allow_changes:
            raise ValueError(
                f"the workdir {os.path.dirname(self.path)!r} holds a run at step {step} trained "
                f"with other settings: {'; '.join(refused)}. Resume with the settings of its "
                f"config.json, pass another --workdir, or pass --allow_config_change to "
                f"continue with the new ones (the earlier config.json is kept).")
        self._keep_as = self._snapshot_path(step)
        logging.warning("resuming at step %d with changed settings: %s (the earlier ones are "
                        "kept in %s)", step, "; ".join(f"{k}: {c}" for k, c in changes.items()),
                        self._keep_as)

    def _snapshot_path(self, step: int) -> str:
        base, n = os.path.join(os.path.dirname(self.path), f"config.{step}"), 1
        path = base + ".json"
        while os.path.exists(path):  # several resumes at one step: keep every file
            n += 1
            path = f"{base}.{n}.json"
        return path

    def record(self) -> None:
        """Writes config.json (after `check`), first keeping the earlier one if it changed."""
        if self._keep_as:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                files.write_text_atomically(self._keep_as, f.read())
        files.write_text_atomically(self.path, self._text)
