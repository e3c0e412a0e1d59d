"""A simulated full disk for tests (no tests here): `fill_disk_after(monkeypatch, n)` makes every
file opened for writing afterwards (through `open` or `os.fdopen`) accept `n` more bytes in
all, then raise OSError(ENOSPC) after writing the part that fits, as a real full disk does."""

from __future__ import annotations

import builtins
import errno
import os


class _FillingFile:
    def __init__(self, file, disk: dict):
        self._file, self._disk = file, disk

    def write(self, data):
        fits = data[:self._disk["left"]]
        self._file.write(fits)
        self._disk["left"] -= len(fits)
        if len(fits) < len(data):
            self._file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __getattr__(self, name):
        return getattr(self._file, name)


def fill_disk_after(monkeypatch, n: int) -> None:
    disk = {"left": n}
    real_open, real_fdopen = builtins.open, os.fdopen

    def wrap(file, mode):
        return _FillingFile(file, disk) if any(c in mode for c in "wax+") else file

    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *args, **kwargs: wrap(
        real_open(file, mode, *args, **kwargs), mode))
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *args, **kwargs: wrap(
        real_fdopen(fd, mode, *args, **kwargs), mode))
