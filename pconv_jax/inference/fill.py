"""A photo of any size through any method: crops around its holes, scaled to the method's side.

A network fills well where its holes look like the holes it was trained on: at about its
training side (`Method.training_size`, the workdir's `data.image_size`), with context around
the hole. Far from it (a 512 px photo for a network trained at 64 px) its fills turn dark or
speckled. So, as the "Crop" and "Resize" strategies of interactive tools do, `fill_photo`

- fills the photo whole when it fits the method's working side (`working_side`: the training
  side of a network, `max_side` for the classical methods, whichever is smaller);
- otherwise fills it crop by crop around its hole regions (`hole_boxes`: each with context of
  at least MIN_CONTEXT pixels and half the region's size, at most MAX_CROPS crops a photo);
- fills a crop larger than the working side from a copy downscaled to it, and scales only the
  filled pixels back up (`fill_downscaled`).

Only hole pixels change: every known pixel of the result is the photo's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.inpainter import Inpainter

# Context kept around a hole region when a photo is filled crop by crop: at least this many
# pixels, and at least half the region's size.
MIN_CONTEXT = 48
# A photo is filled in at most this many crops (one network or PatchMatch call each).
MAX_CROPS = 64
MAX_SIDE = 1024  # the commands' default --max_side

# One image (H, W, 3) float in [0, 1] and its mask (H, W, 1), 1 = valid -> its composite.
FillOne = Callable[[np.ndarray, np.ndarray], np.ndarray]


def working_side(method: FillOne, max_side: int = MAX_SIDE) -> int:
    """The longest side `method` is given: its training side (a network's), at most `max_side`."""
    training_size = getattr(method, "training_size", None)
    return min(max_side, training_size) if training_size else max_side


def fill_photo(method: FillOne, image: np.ndarray, valid: np.ndarray,
               max_side: int = MAX_SIDE) -> np.ndarray:
    """The composite (H, W, 3) of a photo of any size: whole when it fits the method's working
    side, else crop by crop around its holes, each crop downscaled to that side when larger."""
    side = working_side(method, max_side)
    if max(image.shape[:2]) <= side:
        return method(image, valid)
    result = image.copy()
    for y0, x0, y1, x1 in hole_boxes(valid[..., 0] <= MASK_THRESHOLD):
        crop, crop_valid = image[y0:y1, x0:x1], valid[y0:y1, x0:x1]
        if max(y1 - y0, x1 - x0) <= side:
            filled = method(crop, crop_valid)
        else:
            filled = fill_downscaled(method, crop, crop_valid, side)
        result[y0:y1, x0:x1] = np.where(crop_valid > MASK_THRESHOLD, crop, filled)
    return result


def inpaint_photo(method: FillOne, photo: np.ndarray, valid: np.ndarray,
                  max_side: int = MAX_SIDE) -> np.ndarray:
    """uint8 result at the photo's resolution; outside the holes exactly the photo's pixels."""
    filled = fill_photo(method, photo.astype(np.float32) / 255.0, valid, max_side)
    filled = np.round(np.clip(filled, 0, 1) * 255).astype(np.uint8)
    return np.where(valid > MASK_THRESHOLD, photo, filled)


def sized_inpainter(method: FillOne, max_side: int = MAX_SIDE) -> Inpainter:
    """An inpainter of batches that fills each image with `fill_photo` (the evaluation's path
    for images larger than a network's training side)."""
    def inpaint(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images, masks = np.asarray(images, np.float32), np.asarray(masks, np.float32)
        return np.stack([fill_photo(method, image, mask[..., :1], max_side)
                         for image, mask in zip(images, masks)])
    return inpaint


def fill_downscaled(method: FillOne, image: np.ndarray, valid: np.ndarray,
                    max_side: int) -> np.ndarray:
    """Fills a copy scaled to `max_side`, scales the fill back up; known pixels as given."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # A small pixel that covers any hole pixel is a hole: no hole colour leaks into the context.
    hole_cover = cv2.resize((valid[..., 0] <= MASK_THRESHOLD).astype(np.float32), size,
                            interpolation=cv2.INTER_AREA)
    small_valid = (hole_cover <= 0).astype(np.float32)[..., None]
    filled = cv2.resize(method(small_image, small_valid), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.where(valid > MASK_THRESHOLD, image, np.clip(filled, 0, 1))


def hole_boxes(holes: np.ndarray, max_boxes: int = MAX_CROPS) -> list[tuple[int, int, int, int]]:
    """At most `max_boxes` (y0, x0, y1, x1) boxes around the hole regions with context, merged
    where they overlap.

    Every hole pixel lies in exactly one box, and a box holds whole hole regions with at least
    their context. The work is linear in the image size: the regions' boxes are grouped on a
    painted map, not pair by pair. When the groups are more than `max_boxes` (a speckled mask),
    the context doubles until they are not, which bounds the crops one photo costs.
    """
    h, w = holes.shape
    count, _, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=8)
    x, y, bw, bh = stats[1:count, :4].T.astype(np.int64)
    context = MIN_CONTEXT
    while True:
        margin = np.maximum(context, np.maximum(bw, bh) // 2)
        boxes = np.stack([np.maximum(y - margin, 0), np.maximum(x - margin, 0),
                          np.minimum(y + bh + margin, h), np.minimum(x + bw + margin, w)], axis=1)
        groups = grouped_boxes(boxes, (h, w))
        if len(groups) <= max_boxes:  # a context as large as the image leaves one group
            return merge_overlapping(groups)
        context *= 2


def grouped_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The bounding boxes (y0, x0, y1, x1) of the groups of `boxes` that overlap or touch, in one
    pass over the image: the boxes are painted (corner marks, summed up), the painting labelled."""
    marks = np.zeros((shape[0] + 1, shape[1] + 1), np.int32)
    y0, x0, y1, x1 = boxes.T
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(marks, (ys, xs), sign)
    np.cumsum(marks, axis=0, out=marks)
    np.cumsum(marks, axis=1, out=marks)
    painted = (marks[:-1, :-1] > 0).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(painted, connectivity=4)
    x, y, w, h = stats[1:count, :4].T.astype(np.int64)
    return np.stack([y, x, y + h, x + w], axis=1)


def merge_overlapping(boxes: Sequence[Sequence[int]]) -> list[tuple[int, int, int, int]]:
    """Unites overlapping boxes until none overlap (pairwise: meant for a few boxes)."""
    boxes = [tuple(int(v) for v in box) for box in boxes]
    merged = True
    while merged:
        merged, kept = False, []
        for a in boxes:
            for i, b in enumerate(kept):
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    kept[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    merged = True
                    break
            else:
                kept.append(a)
        boxes = kept
    return boxes
