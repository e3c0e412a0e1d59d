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
        on_border = np.concatenate([mask[0, :, 0], mask[-1, :, 0], mask[:, 0, 0], mask[:, -1, 0]])
        assert (on_border == 0).any() == (border == "touch")


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
    if "per-cell" not in flags.FLAGS:
        masks.define_flags()
    flags.FLAGS.unparse_flags()
    masks.main(flags.FLAGS(["masks", "write-test-set", str(out), "--per-cell", "2", "--size", "48",
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
        touches = hole[0].any() or hole[-1].any() or hole[:, 0].any() or hole[:, -1].any()
        assert touches == (border == "B")
        np.testing.assert_array_equal(hole, masks.generated_test_mask(i, 2, 48, 1)[..., 0] == 0)


def test_default_mask_config():
    from test_train_helpers import default_config
    config = default_config().masks
    assert config.source == "generated"
    assert (config.nvidia_dilation_min, config.nvidia_dilation_max) == (5, 47)
