"""Checks every weight file passes before its numbers are used, whatever its format.

A weight file is untrusted input: the zip containers of `.pth` and `.npz` files are opened only
after their member list is checked, and loaded weights must be finite floating-point numbers.
"""

from __future__ import annotations

import collections
import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

# A zip archive may expand to at most this many bytes per byte of the file (plus a small
# constant): weights barely compress, a zip bomb expands a thousandfold.
MAX_EXPANSION = 100
EXPANSION_SLACK = 1 << 20


class WeightsFileError(ValueError):
    """A weight file that is corrupt, malformed or refused as unsafe."""


def open_zip(path: str) -> zipfile.ZipFile:
    """Opens a zip archive whose members have plain, unique names and plausible sizes."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise WeightsFileError(f"{path}: not a valid zip archive ({err}).") from None
    try:
        check_zip_members(zf, path)
    except BaseException:
        zf.close()
        raise
    return zf


@contextlib.contextmanager
def zip_read_errors(path: str) -> Iterator[None]:
    """Reports a damaged member (bad CRC, truncated or undecodable data) as a WeightsFileError."""
    try:
        yield
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise WeightsFileError(f"{path}: damaged zip archive ({err}).") from None


def check_zip_members(zf: zipfile.ZipFile, path: str) -> None:
    infos = zf.infolist()
    counts = collections.Counter(info.filename for info in infos)
    duplicates = sorted(name for name, n in counts.items() if n > 1)
    if duplicates:
        raise WeightsFileError(
            f"{path}: the zip archive lists {duplicates[:3]} more than once; a weight file never "
            "does (the file is corrupt or crafted).")
    unsafe = [name for name in counts if not _plain_member_name(name)]
    if unsafe:
        raise WeightsFileError(
            f"{path}: the zip archive holds members with unsafe names {unsafe[:3]} (absolute, "
            "'..', backslashes or control characters); refusing it.")
    total = sum(info.file_size for info in infos)
    limit = MAX_EXPANSION * os.path.getsize(path) + EXPANSION_SLACK
    if total > limit:
        raise WeightsFileError(
            f"{path}: the zip archive claims {total:,} bytes uncompressed, more than "
            f"{MAX_EXPANSION}x its size on disk; weights do not compress like that (a zip bomb?).")


def _plain_member_name(name: str) -> bool:
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and ":" not in parts[0]
            and ".." not in parts and all(ord(c) >= 32 for c in name))


def check_weights(key: str, array: np.ndarray, path: str) -> None:
    """Loaded weights must be finite floating-point numbers: a NaN would otherwise surface later
    as a non-finite training loss."""
    if not np.issubdtype(array.dtype, np.floating):
        raise WeightsFileError(
            f"{path}: weight '{key}' has dtype {array.dtype}, expected floating point.")
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise WeightsFileError(
            f"{path}: weight '{key}' holds {bad} non-finite value(s) (NaN or inf) out of "
            f"{array.size}; the file is corrupt.")
