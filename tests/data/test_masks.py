"""Tests of the irregular mask generator and the test-set writer."""
import os

import cv2
import numpy as np
import pytest
from absl import flags

from pconv_jax.data import masks


@pytest.mark.parametrize("bin_index", range(masks.NUM_BINS))
@pytest.mark.parametrize("border", ["avoid", "touch"])
def test_hole_ratio_in_bin_and_border_respected(bin_index, border):
    lo, hi = masks.HOLE_RATIO_BINS[bin_index]
    for i in range(4):
        mask = masks.generate_mask((7, bin_index, i), 64, hole_ratio_range=(lo, hi), border=border)
        hole_fraction = np.mean(mask == 0)
        assert lo < hole_fraction <= hi
        # Independent of the code under test: NVIDIA's rule, 50 px at 512 -> 6 px at 64.
        frame = np.ones((64, 64), bool)
        frame[6:-6, 6:-6] = False
        assert (mask[..., 0][frame] == 0).any() == (border == "touch")


def test_binary_shape_dtype():
    mask = masks.generate_mask(3, (48, 80))
    assert mask.shape == (48, 80, 1) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert 0.01 < np.mean(mask == 0) <= 0.6


def test_reproducible_from_seed():
    a = masks.generate_mask((1, 2, 3), 64)
    b = masks.generate_mask((1, 2, 3), 64)
    c = masks.generate_mask((1, 2, 4), 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(masks.generate_mask(g1, 32), masks.generate_mask(g2, 32))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="hole_ratio_range"):
        masks.generate_mask(0, 32, hole_ratio_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="border"):
        masks.generate_mask(0, 32, border="edge")


def test_bin_and_border_layout():
    assert masks.bin_and_border(0, 1000) == (0, "N")
    assert masks.bin_and_border(999, 1000) == (0, "N")
    assert masks.bin_and_border(1000, 1000) == (0, "B")
    assert masks.bin_and_border(1999, 1000) == (0, "B")
    assert masks.bin_and_border(2000, 1000) == (1, "N")
    assert masks.bin_and_border(11999, 1000) == (5, "B")
    assert masks.bin_and_border(5, 2) == (1, "N")
    assert masks.bin_and_border(6, 2) == (1, "B")
    with pytest.raises(ValueError):
        masks.bin_and_border(12000, 1000)


def test_write_test_set_command(tmp_path):
    out = tmp_path / "set"
    if "per_cell" not in flags.FLAGS:
        masks.define_flags()
    flags.FLAGS.unparse_flags()
    masks.main(flags.FLAGS(["masks", "write-test-set", str(out), "--per_cell", "2", "--size", "48",
                            "--seed", "1"]))
    names = sorted(os.listdir(out))
    assert names == [f"{i:05d}.png" for i in range(24)]
    for i, name in enumerate(names):
        png = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert png.shape == (48, 48) and set(np.unique(png)) <= {0, 255}
        hole = png == 255  # test convention: white = hole
        bin_index, border = masks.bin_and_border(i, 2)
        lo, hi = masks.HOLE_RATIO_BINS[bin_index]
        assert lo < hole.mean() <= hi
        margin = 5  # 50 px at 512 px, scaled to 48 px: 4.69 -> 5
        near = (hole[:margin].any() or hole[-margin:].any()
                or hole[:, :margin].any() or hole[:, -margin:].any())
        assert near == (border == "B")
        np.testing.assert_array_equal(hole, masks.generated_test_mask(i, 2, 48, 1)[..., 0] == 0)


def test_default_mask_config():
    from tests.helpers.training import default_config
    config = default_config().masks
    assert config.source == "generated"
    assert (config.nvidia_dilation_min, config.nvidia_dilation_max) == (5, 47)


def test_border_margin_is_nvidia_50_px_at_512_scaled():
    assert masks.border_margin(512) == 50
    assert masks.border_margin(256) == 25
    assert masks.border_margin(128) == 13  # 12.5 rounds up
    assert masks.border_margin(1024) == 100
    assert masks.border_margin(8) == 1  # never 0


def test_near_border_and_distance():
    hole = np.zeros((512, 512), bool)
    assert masks.border_distance(hole) is None and masks.border_label(hole) == "N"
    hole[50:100, 200:300] = True  # 50 px from the top: N, exactly as NVIDIA's frame
    assert masks.border_distance(hole) == 50 and masks.border_label(hole) == "N"
    hole[49, 250] = True  # 49 px: B, though it does not touch the border
    assert masks.border_distance(hole) == 49 and masks.border_label(hole) == "B"
    valid = (~hole).astype(np.float32)[..., None]  # an in-memory mask works too
    assert masks.near_border(valid)


@pytest.mark.parametrize("bin_index", range(masks.NUM_BINS))
def test_n_masks_keep_the_margin_and_b_masks_include_close_ones_at_512(bin_index):
    lo, hi = masks.HOLE_RATIO_BINS[bin_index]
    for i in range(3):
        hole = masks.generate_mask((2, bin_index, i), 512, hole_ratio_range=(lo, hi),
                                   border="avoid")[..., 0] == 0
        rows, cols = np.nonzero(hole)
        nearest = min(rows.min(), 511 - rows.max(), cols.min(), 511 - cols.max())
        assert nearest >= 50 and lo < hole.mean() <= hi


def test_touch_masks_touch_or_only_come_close():
    distances = []
    for i in range(40):
        hole = masks.generate_mask((4, i), 512, hole_ratio_range=(0.01, 0.3),
                                   border="touch")[..., 0] == 0
        rows, cols = np.nonzero(hole)
        distances.append(min(rows.min(), 511 - rows.max(), cols.min(), 511 - cols.max()))
    assert max(distances) < 50
    assert 0 in distances and any(d > 0 for d in distances)
