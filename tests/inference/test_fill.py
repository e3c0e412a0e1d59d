"""Photos of any size through any method: crops around the holes at the method's working side
(a network's training side), the bound on crops, and known pixels kept bit for bit."""

from __future__ import annotations

import time

import cv2
import numpy as np

from pconv_jax.inference import fill, methods


def _fake_method(seen: list[tuple[int, ...]], training_size: int | None = None):
    """A method that records the shapes it is given and fills holes with a gradient."""
    def inpaint(images, masks):
        seen.append(images.shape)
        ramp = np.linspace(0.2, 0.8, images.shape[2], dtype=np.float32)[None, None, :, None]
        return np.where(masks > 0.5, images, ramp)
    return methods.Method("fake", "fake", inpaint, training_size=training_size)


def _strokes(h: int, w: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 1) valid mask with three random strokes `width` px wide."""
    rng = np.random.default_rng(seed)
    holes = np.zeros((h, w), np.uint8)
    for _ in range(3):
        a, b = rng.integers(0, (w, h), 2), rng.integers(0, (w, h), 2)
        cv2.line(holes, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1, width)
    return (holes == 0).astype(np.float32)[..., None]


def test_a_network_trained_at_n_fills_a_4n_photo_from_crops_downscaled_to_about_n():
    n = 64
    photo = np.random.default_rng(0).integers(0, 256, (4 * n, 4 * n, 3), np.uint8)
    valid = _strokes(4 * n, 4 * n, width=12)
    holes = valid[..., 0] == 0
    seen: list[tuple[int, ...]] = []
    result = fill.inpaint_photo(_fake_method(seen, training_size=n), photo, valid)
    sides = [max(shape[1:3]) for shape in seen]
    assert sides and all(0.9 * n <= side <= n for side in sides), sides  # about N, never more
    np.testing.assert_array_equal(result[~holes], photo[~holes])  # bit-identical outside holes
    assert (result[holes] != photo[holes]).any()
    # Without a training side (a classical method) the photo fits max_side: filled whole.
    seen.clear()
    fill.inpaint_photo(_fake_method(seen), photo, valid)
    assert seen == [(1, 4 * n, 4 * n, 3)]


def test_a_small_hole_in_a_large_photo_is_filled_at_full_resolution_when_its_crop_fits():
    photo = np.random.default_rng(1).integers(0, 256, (600, 800, 3), np.uint8)
    valid = np.ones((600, 800, 1), np.float32)
    valid[300:306, 400:410] = 0  # crop: the hole and MIN_CONTEXT around, 106 x 102 px
    seen: list[tuple[int, ...]] = []
    fill.inpaint_photo(_fake_method(seen, training_size=256), photo, valid)
    assert seen == [(1, 102, 106, 3)]


def test_the_evaluations_sized_inpainter_fills_each_image_of_a_batch_as_a_photo():
    seen: list[tuple[int, ...]] = []
    images = np.random.default_rng(2).random((2, 128, 128, 3)).astype(np.float32)
    masks = np.stack([_strokes(128, 128, 6, seed) for seed in (0, 1)])
    out = fill.sized_inpainter(_fake_method(seen, training_size=32))(images, masks)
    assert out.shape == images.shape and all(max(s[1:3]) <= 32 for s in seen)
    np.testing.assert_array_equal(out[masks[..., 0] > 0], images[masks[..., 0] > 0])


def test_large_photo_is_filled_by_crops_and_keeps_every_known_pixel():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (400, 600, 3), np.uint8)
    valid = np.ones((400, 600, 1), np.float32)
    valid[10:20, 10:25] = 0      # two small holes far apart: two crops
    valid[370:382, 560:580] = 0
    valid[150:230, 250:370] = 0  # a hole region (with context) above max_side: downscaled
    seen: list[tuple[int, ...]] = []
    result = fill.inpaint_photo(_fake_method(seen), photo, valid, max_side=128)
    assert result.shape == photo.shape and result.dtype == np.uint8
    known, holes = valid[..., 0] > 0, valid[..., 0] == 0
    np.testing.assert_array_equal(result[known], photo[known])  # bit-exact at full resolution
    assert not np.array_equal(result[holes], photo[holes])
    assert len(seen) == 3 and all(max(s[1:3]) <= 128 for s in seen), seen
    # The ramp the fake fills with reaches the full-resolution photo (scaled up in the big hole).
    big = result[150:230, 250:370].astype(np.float32) / 255
    assert 0.15 < big.mean() < 0.85 and big.std() > 0.02


def test_boxes_merge_where_their_context_overlaps():
    holes = np.zeros((200, 200), bool)
    holes[50:55, 50:55] = holes[60:65, 90:95] = True  # close: one box
    holes[190:195, 190:195] = True                     # far: its own box
    boxes = fill.hole_boxes(holes)
    assert len(boxes) == 2
    covered = np.zeros_like(holes, int)
    for y0, x0, y1, x1 in boxes:
        covered[y0:y1, x0:x1] += 1
    assert (covered[holes] == 1).all()  # every hole pixel in exactly one box


def _assert_boxes_hold_regions_with_context(holes, boxes) -> None:
    """Boxes don't overlap, and each holds whole hole regions with at least MIN_CONTEXT around."""
    painted = np.zeros(holes.shape, int)
    for y0, x0, y1, x1 in boxes:
        painted[y0:y1, x0:x1] += 1
    assert painted.max() == 1  # no two boxes overlap
    box_of = np.zeros(holes.shape, int)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        box_of[y0:y1, x0:x1] = i + 1
    count, _, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=8)
    c = fill.MIN_CONTEXT
    for x, y, w, h, _ in stats[1:count]:
        around = box_of[max(0, y - c):y + h + c, max(0, x - c):x + w + c]
        assert (around == around.flat[0]).all() and around.flat[0] > 0


def test_speckled_mask_is_grouped_in_linear_time():
    holes = np.zeros((1100, 1100), bool)
    holes[200::8, ::8] = True  # 15,594 separated dots (a 1.3 % fill)
    holes[0, 0] = True         # and one far from them: the pairwise merge rescanned all after it
    start = time.perf_counter()
    boxes = fill.hole_boxes(holes)
    seconds = time.perf_counter() - start
    assert sorted(boxes) == [(0, 0, 49, 49), (152, 0, 1100, 1100)]
    _assert_boxes_hold_regions_with_context(holes, boxes)
    assert seconds < 5, seconds  # about 0.05 s; the pairwise merge took 14 s to 70 s


def test_many_distant_holes_are_filled_in_a_bounded_number_of_crops():
    holes = np.zeros((1100, 1100), bool)
    holes[5::100, 5::100] = True  # 121 dots, their contexts apart: one crop each before
    boxes = fill.hole_boxes(holes)
    assert 1 <= len(boxes) <= fill.MAX_CROPS
    _assert_boxes_hold_regions_with_context(holes, boxes)
    seen: list[tuple[int, ...]] = []
    photo = np.random.default_rng(2).integers(0, 256, (1100, 1100, 3), np.uint8)
    valid = (~holes).astype(np.float32)[..., None]
    result = fill.inpaint_photo(_fake_method(seen), photo, valid, max_side=1024)
    assert 1 <= len(seen) <= fill.MAX_CROPS
    np.testing.assert_array_equal(result[~holes], photo[~holes])
    assert (result[holes] != photo[holes]).any()
