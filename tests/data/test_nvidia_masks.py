"""Tests of the NVIDIA mask-set readers on small generated PNG sets."""
import os

import cv2
import numpy as np
import pytest

from pconv_jax.data import masks, nvidia_masks

PER_CELL = 2
SIZE = 40


def _write_set(folder, hole_is_white=True):
    os.makedirs(folder, exist_ok=True)
    for i in range(12 * PER_CELL):
        hole = masks.generated_test_mask(i, PER_CELL, SIZE, seed=3)[..., 0] == 0
        png = np.where(hole, 255, 0) if hole_is_white else np.where(hole, 0, 255)
        cv2.imwrite(os.path.join(folder, f"{i:05d}.png"), png.astype(np.uint8))


@pytest.mark.parametrize("holes", ["white", "black"])
def test_scan_labels_from_index(tmp_path, holes):
    _write_set(tmp_path, holes == "white")
    result = nvidia_masks.scan_test_masks(str(tmp_path), holes=holes)
    assert result.per_cell == PER_CELL and not result.left_out
    assert len(result.records) == 24
    expected = [(i // 4, "N" if i % 4 < 2 else "B") for i in range(24)]
    assert [(r.bin_index, r.border) for r in result.records] == expected
    for r in result.records:
        assert r.bin_range == masks.HOLE_RATIO_BINS[r.bin_index]
        assert r.bin_range[0] < r.hole_ratio <= r.bin_range[1]
        assert r.near_border == (r.border == "B")
        margin = masks.border_margin(SIZE)
        assert (r.border_distance < margin) == (r.border == "B")
    assert len(result.select(bin_index=2, border="B")) == PER_CELL
    mask = nvidia_masks.load_test_mask(result.records[5], holes=holes)
    assert mask.shape == (SIZE, SIZE, 1) and mask.dtype == np.float32
    assert np.isclose(np.mean(mask == 0), result.records[5].hole_ratio)


def test_mislabelled_and_unreadable_files_reported(tmp_path):
    _write_set(tmp_path)
    # File 0 should be bin 0 (ratio <= 0.1); give it a half-hole mask.
    half = np.zeros((SIZE, SIZE), np.uint8)
    half[5:25, 5:35] = 255
    cv2.imwrite(str(tmp_path / "00000.png"), half)
    # File 2 is labelled B (a hole within 4 px of the border at 40 px); give it an interior hole
    # of the right ratio.
    interior = np.zeros((SIZE, SIZE), np.uint8)
    interior[10:18, 10:28] = 255  # 144 / 1600 = 0.09 → bin 0
    cv2.imwrite(str(tmp_path / "00002.png"), interior)
    (tmp_path / "00007.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="3 of 24"):
        result = nvidia_masks.scan_test_masks(str(tmp_path))
    assert [r.index for r in result.records] == [i for i in range(24) if i not in (0, 2, 7)]
    left_out = result.left_out
    assert [os.path.basename(f.path) for f in left_out] == ["00000.png", "00002.png", "00007.png"]
    assert "hole ratio" in left_out[0].reason
    assert "labelled B" in left_out[1].reason and "10 px from the border" in left_out[1].reason
    assert "unreadable" in left_out[2].reason and "00007.png" in str(left_out[2])


def test_zero_usable_masks_is_a_clear_error(tmp_path):
    for i in range(12):  # no holes at all: every file contradicts its hole-ratio bin
        cv2.imwrite(str(tmp_path / f"{i:05d}.png"), np.zeros((16, 16), np.uint8))
    message = r"no usable masks in .* \(12 files left out: .*00000.png.*and 10 more"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=message):
        nvidia_masks.scan_test_masks(str(tmp_path))


def test_count_must_be_twelve_k(tmp_path):
    _write_set(tmp_path)
    os.remove(tmp_path / "00023.png")
    with pytest.raises(ValueError, match="12·K"):
        nvidia_masks.scan_test_masks(str(tmp_path))


def test_load_resizes_nearest_and_stays_binary(tmp_path):
    _write_set(tmp_path)
    mask = nvidia_masks.load_test_mask(str(tmp_path / "00020.png"), 97)
    assert mask.shape == (97, 97, 1)
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_training_masks_augmented_binary(tmp_path):
    folder = tmp_path / "disocclusion_img_mask"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        png = np.full((60, 70), 255, np.uint8)  # training convention: black = hole
        png[rng.integers(0, 50):, 10:20] = 0
        cv2.imwrite(str(folder / f"{i}.png"), png)
    assert len(nvidia_masks.list_train_masks(str(tmp_path))) == 3
    sampler = nvidia_masks.NvidiaTrainMasks(str(tmp_path), 32, dilation=(5, 9))
    for seed in range(5):
        mask = sampler((1, seed))
        assert mask.shape == (32, 32, 1) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(sampler((1, 2)), sampler((1, 2)))


def test_dilation_grows_holes():
    hole = np.zeros((64, 64), bool)
    hole[30:34, 30:34] = True
    rng = np.random.default_rng(0)
    out = nvidia_masks.augment_train_mask(hole, rng, 64, dilation=(9, 9), rotate=False)
    # A 9x9 elliptic kernel grows the 4x4 square by 4 px on each side (minus its corners).
    assert 4 * 4 < np.sum(out == 0) <= 12 * 12


def test_missing_training_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nvidia_train_dir"):
        nvidia_masks.list_train_masks(str(tmp_path / "nope"))


def test_b_masks_that_only_come_close_to_the_border_are_accepted(tmp_path):
    _write_set(tmp_path)
    margin = masks.border_margin(SIZE)  # 4 px at 40 px (50 px at 512)
    close = np.zeros((SIZE, SIZE), np.uint8)
    close[margin - 1:margin + 5, 10:30] = 255  # 120 / 1600: bin 0, 3 px from the border
    cv2.imwrite(str(tmp_path / "00002.png"), close)  # index 2: bin 0, B
    inside = np.zeros((SIZE, SIZE), np.uint8)
    inside[margin:margin + 6, 10:30] = 255  # exactly at the margin: N
    cv2.imwrite(str(tmp_path / "00000.png"), inside)  # index 0: bin 0, N
    result = nvidia_masks.scan_test_masks(str(tmp_path))
    assert not result.left_out and len(result.records) == 24
    assert result.records[2].border_distance == margin - 1 and result.records[2].near_border
    # the same file as an N mask is left out, with the distance in the reason
    cv2.imwrite(str(tmp_path / "00001.png"), close)  # index 1: bin 0, N
    with pytest.warns(UserWarning, match="1 of 24"):
        result = nvidia_masks.scan_test_masks(str(tmp_path))
    assert [os.path.basename(f.path) for f in result.left_out] == ["00001.png"]
    assert "labelled N but its nearest hole pixel is 3 px" in result.left_out[0].reason
