"""Writing result files so that no reader, crash or full disk ever sees half of one.

`atomic_output(path)` yields a file object; its contents replace `path` only when the block
completes: written to a temporary file in the same folder, fsynced, renamed over `path` (the
folder is fsynced too, so the rename survives a power cut). On any error `path` keeps its old
contents and the temporary file is removed. `write_texts_atomically` replaces several files
only once all of them are written. A full disk becomes a `DiskFullError` that names the disk and
its free space (`disk_full_text`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries that wrap the OS error in their own exception (TensorStore, Orbax) say it.
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'")


class DiskFullError(OSError):
    """A write that failed because the disk (or the user's quota) is full."""


def mentions_disk_full(text: str) -> bool:
    """Whether a message says that the disk (or quota) is full."""
    return any(t in text for t in _DISK_FULL_TEXTS)


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an exception it was raised from, is a full disk or quota."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(err, DiskFullError) or mentions_disk_full(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _mount_point(path: str) -> str:
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_full_text(path: str) -> str:
    """'the disk mounted at /data has 1.2 MiB free' for the disk holding `path`."""
    where = _existing(path)
    try:
        free = human_bytes(shutil.disk_usage(where).free)
    except OSError:
        free = "an unknown amount of space"
    return f"the disk mounted at {_mount_point(where)} has {free} free"


def disk_full_error(path: str, what: str) -> DiskFullError:
    """The one-line DiskFullError for a failed write of `what` (e.g. 'results.json') at `path`."""
    err = DiskFullError(f"disk full: could not write {what} ({disk_full_text(path)}); free "
                        f"some space and run the command again")
    err.errno = errno.ENOSPC
    return err


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object (`mode` 'w' or 'wb') whose contents replace `path` when the block ends.

    Raises DiskFullError (the old `path` intact) when the disk fills up.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the file from other users
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full_error(directory, f"{path} (left as it was)") from err
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through `atomic_output`."""
    write_texts_atomically({path: text})


def write_texts_atomically(texts: Mapping[str | os.PathLike, str]) -> None:
    """Writes {path: text} through `atomic_output`, every file written and fsynced before any
    is renamed into place: a full disk while writing any of them leaves all the old ones (a
    results.json never goes with another run's results.md)."""
    try:
        with contextlib.ExitStack() as stack:
            for path, text in texts.items():
                f = stack.enter_context(atomic_output(path))
                f.write(text)
                f.flush()  # on disk now, not when the renames begin
                os.fsync(f.fileno())
    except DiskFullError as err:
        if len(texts) < 2:
            raise
        paths = [os.path.abspath(os.fspath(p)) for p in texts]
        raise disk_full_error(os.path.dirname(paths[0]),
                              f"{' and '.join(paths)} (all left as they were)") from err
