"""Atomic result files: a full disk or an error mid-write leaves the old file and no leftovers."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from pconv_jax import files
from tests.helpers.full_disk import fill_disk_after


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text('{"old": true}')
    fill_disk_after(monkeypatch, 5)
    with pytest.raises(files.DiskFullError, match=r"disk full: could not write .*results.json "
                                                  r"\(left as it was\).*mounted at .* free") as e:
        files.write_text_atomically(path, '{"new": "a longer text than the disk can take"}')
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["results.json"]


def test_a_pair_of_files_is_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    json_path, md_path = tmp_path / "results.json", tmp_path / "results.md"
    files.write_texts_atomically({json_path: "old json", md_path: "old table"})
    fill_disk_after(monkeypatch, len("new json") + 3)  # the second file does not fit
    with pytest.raises(files.DiskFullError, match=r"could not write .*results.json and "
                                                  r".*results.md \(all left as they were\)"):
        files.write_texts_atomically({json_path: "new json", md_path: "new table"})
    monkeypatch.undo()
    assert (json_path.read_text(), md_path.read_text()) == ("old json", "old table")
    assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md"]


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_output(path, "wb") as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["weights.npz"]
    with files.atomic_output(path, "wb") as f:
        np.savez(f, a=np.arange(3))
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_disk_full_is_recognised_through_library_wrappers():
    wrapped = ValueError("RESOURCE_EXHAUSTED: Failed to write 1309963 bytes to file 9: No space "
                         "left on device [os_error_code='28']")
    assert files.is_disk_full(wrapped)
    try:
        try:
            raise OSError(errno.EDQUOT, "quota")
        except OSError as err:
            raise RuntimeError("save failed") from err
    except RuntimeError as outer:
        assert files.is_disk_full(outer)
    assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert files.human_bytes(1536) == "1.5 KiB" and files.human_bytes(12) == "12 bytes"


def test_write_text_atomically(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    files.write_text_atomically(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
