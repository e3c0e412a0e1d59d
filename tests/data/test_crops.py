"""Tests of the crops: training's random crop and flip, evaluation's centre crop, the scaling
they share."""
import cv2
import numpy as np
import pytest

from pconv_jax.data import crops


def test_thin_images_are_cropped_before_scaling_in_bounded_memory():
    import tracemalloc
    thin = np.random.default_rng(0).integers(0, 256, (1, 3000, 3), np.uint8)
    tracemalloc.start()
    crop = crops.random_crop(thin, np.random.default_rng(1), 64, "crop")
    centre = crops.centre_crop(thin, 64, "resize")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert crop.shape == centre.shape == (64, 64, 3)
    assert peak < 1_000_000  # the whole strip scaled up: 64 x 192000 x 3 = 37 MB
    # The window holds the pixels of the scaled strip (to OpenCV's fixed-point rounding).
    y, x = np.mgrid[0:3, 0:400]
    strip = np.stack([x * 0.6, 100 + y * 40 + x * 0.1, 255 - x * 0.6], -1).astype(np.uint8)
    scaled = cv2.resize(strip, (4267, 32), interpolation=cv2.INTER_LINEAR)  # 3 -> 32 rows
    for left in (0, 1, 2000, 4267 - 32):
        window = crops.scaled_crop(strip, 32, "crop", 0, left)
        assert np.abs(window.astype(int) - scaled[:, left:left + 32]).max() <= 1
    # Images of usual shapes are scaled whole, as ever (the same bytes: resumed runs match).
    image = np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)
    whole = cv2.resize(image, (48, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(crops.scaled_crop(image, 32, "crop", 0, 5), whole[:, 5:37])


def test_an_unknown_resize_mode_names_the_setting():
    assert crops.check_mode("resize") == "resize"
    with pytest.raises(ValueError, match="config.data.resize_mode must be 'crop' or 'resize'"):
        crops.check_mode("stretch")
