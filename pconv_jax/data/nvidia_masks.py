"""Readers for the NVIDIA irregular mask sets (and test sets written by `pconv_jax.data.masks`).

- Training set (`disocclusion_img_mask/*.png`, black = hole): `list_train_masks`, then
  `augment_train_mask` (random dilation, rotation, crop, flips; nearest-neighbour only, binary).
- Test set (`testing_mask_dataset/00000.png` ... , white = hole): `scan_test_masks` labels each
  file with its hole-ratio bin and N/B flag from its index (blocks of 2·K per bin, K = count / 12),
  checks the label against the pixels and reports files that disagree or cannot be read.
  `load_test_mask` returns the mask as float32 (H, W, 1), 1 = valid.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import warnings
from collections.abc import Sequence

import cv2
import numpy as np

from pconv_jax.data.masks import HOLE_RATIO_BINS, NUM_BINS, bin_and_border

_TEST_NAME = re.compile(r"^(\d{5})\.png$")


def read_hole_png(path: str, *, hole_is_white: bool) -> np.ndarray:
    """Reads a mask PNG as a boolean hole map (H, W), thresholded at 128.

    Raises:
      ValueError: the file cannot be read as an image.
    """
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError(f"cannot read mask image {path!r}: missing, empty or not an image.")
    return image >= 128 if hole_is_white else image < 128


def _to_valid(hole: np.ndarray) -> np.ndarray:
    return (~hole).astype(np.float32)[..., None]


def _resize_nearest(hole: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    if hole.shape == (h, w):
        return hole
    return cv2.resize(hole.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


# ----------------------------------------------------------------------------- test set

@dataclasses.dataclass(frozen=True)
class TestMaskRecord:
    """One file of a test mask set, labelled from its index and measured from its pixels."""

    __test__ = False  # not a pytest test class despite the name

    path: str
    index: int
    bin_index: int                 # 0..5
    bin_range: tuple[float, float]  # hole ratio (lo, hi]
    border: str                    # 'N' (hole does not touch the border) or 'B'
    hole_ratio: float              # measured from the pixels
    touches_border: bool           # measured from the pixels


@dataclasses.dataclass
class TestMaskSet:
    """Result of `scan_test_masks`: usable records and the files that were left out."""

    __test__ = False

    records: list[TestMaskRecord]
    per_cell: int                                     # K: masks per bin and N/B cell
    problems: list[str] = dataclasses.field(default_factory=list)

    def select(self, bin_index: int | None = None, border: str | None = None
               ) -> list[TestMaskRecord]:
        """Records of one bin and/or one border flag."""
        return [r for r in self.records
                if (bin_index is None or r.bin_index == bin_index)
                and (border is None or r.border == border)]


def _check_file(path: str, index: int, per_cell: int, hole_is_white: bool,
                tolerance: float, check_border: bool) -> tuple[TestMaskRecord | None, str | None]:
    bin_index, border = bin_and_border(index, per_cell)
    lo, hi = HOLE_RATIO_BINS[bin_index]
    try:
        hole = read_hole_png(path, hole_is_white=hole_is_white)
    except ValueError as error:
        return None, str(error)
    ratio = float(hole.mean())
    touches = bool(hole[0].any() or hole[-1].any() or hole[:, 0].any() or hole[:, -1].any())
    record = TestMaskRecord(path, index, bin_index, (lo, hi), border, ratio, touches)
    if not lo - tolerance < ratio <= hi + tolerance:
        return record, (f"{path}: index {index} belongs to bin ({lo}, {hi}] but its hole ratio "
                        f"is {ratio:.4f}")
    if check_border and touches != (border == "B"):
        return record, (f"{path}: index {index} is labelled {border} but the hole "
                        f"{'touches' if touches else 'does not touch'} the border")
    return record, None


def scan_test_masks(directory: str, *, hole_is_white: bool = True, tolerance: float = 0.005,
                    check_border: bool = True, workers: int = 8) -> TestMaskSet:
    """Labels every mask of a test set and cross-checks the labels against the pixels.

    The set holds 12·K files named 00000.png ...; file i belongs to bin i // (2K) and is N
    (no hole pixel on the image border) if i % (2K) < K, else B. The NVIDIA set has K = 1000.

    Args:
      directory: the folder of PNGs (e.g. `testing_mask_dataset/`).
      hole_is_white: True for the test convention (white = hole), False for black = hole.
      tolerance: slack on the bin limits when checking the measured hole ratio.
      check_border: also check the N/B label against the pixels.
      workers: threads reading files.

    Returns:
      A `TestMaskSet`; mislabelled or unreadable files are left out of `records`, described in
      `problems` and announced with a warning.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"test mask folder {directory!r} does not exist.")
    indexed = sorted((int(m.group(1)), name) for name in os.listdir(directory)
                     if (m := _TEST_NAME.match(name)))
    count = len(indexed)
    if count == 0 or count % (2 * NUM_BINS):
        raise ValueError(f"{directory!r} holds {count} files named 00000.png...; a test set "
                         f"needs 12·K of them (K masks per bin and N/B cell).")
    if [i for i, _ in indexed] != list(range(count)):
        raise ValueError(f"the files in {directory!r} are not numbered 00000.png ... "
                         f"{count - 1:05d}.png without gaps.")
    per_cell = count // (2 * NUM_BINS)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 releases the GIL
        results = list(pool.map(
            lambda item: _check_file(os.path.join(directory, item[1]), item[0], per_cell,
                                     hole_is_white, tolerance, check_border), indexed))
    records = [record for record, problem in results if problem is None]
    problems = [problem for _, problem in results if problem is not None]
    if problems:
        warnings.warn(f"{len(problems)} of {count} test masks in {directory!r} were left out "
                      f"(mislabelled or unreadable), e.g. {problems[0]}", stacklevel=2)
    return TestMaskSet(records, per_cell, problems)


def load_test_mask(path: str | TestMaskRecord, size: int | tuple[int, int] | None = None, *,
                   hole_is_white: bool = True) -> np.ndarray:
    """Loads a test mask as float32 (H, W, 1), 1 = valid; resized (nearest) to `size` if given."""
    if isinstance(path, TestMaskRecord):
        path = path.path
    hole = read_hole_png(path, hole_is_white=hole_is_white)
    return _to_valid(hole if size is None else _resize_nearest(hole, size))


def load_test_masks(records: Sequence[TestMaskRecord], size: int | tuple[int, int] | None = None,
                    *, hole_is_white: bool = True) -> np.ndarray:
    """Stacks masks of several records: float32 (N, H, W, 1), 1 = valid."""
    return np.stack([load_test_mask(r, size, hole_is_white=hole_is_white) for r in records])


# ----------------------------------------------------------------------------- training set

def list_train_masks(directory: str) -> list[str]:
    """Sorted PNG paths of the NVIDIA training masks in `directory`.

    Accepts the folder holding `disocclusion_img_mask/` or that folder itself.
    """
    sub = os.path.join(directory, "disocclusion_img_mask")
    folder = sub if os.path.isdir(sub) else directory
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"NVIDIA training mask folder {directory!r} does not exist; set "
            f"config.masks.nvidia_train_dir to the folder holding disocclusion_img_mask/.")
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.lower().endswith(".png"))
    if not paths:
        raise FileNotFoundError(f"no PNG masks in {folder!r}.")
    return paths


def augment_train_mask(hole: np.ndarray, rng: np.random.Generator, size: int | tuple[int, int],
                       *, dilation: tuple[int, int] = (5, 47), rotate: bool = True) -> np.ndarray:
    """Randomly dilates, rotates, crops and flips a boolean hole map.

    Only nearest-neighbour operations are used, so the result stays binary.

    Args:
      hole: boolean (H, W), True = hole.
      rng: NumPy generator.
      size: output side, or (height, width).
      dilation: (min, max) side in pixels of the elliptic dilation kernel (inclusive).
      rotate: rotate by a uniformly random angle (the area rotated in from outside is valid).

    Returns:
      float32 (height, width, 1), 1 = valid, 0 = hole.
    """
    h, w = (size, size) if isinstance(size, int) else size
    canvas = hole.astype(np.uint8)
    k = int(rng.integers(dilation[0], dilation[1] + 1))
    if k > 1:
        canvas = cv2.dilate(canvas, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    if rotate:
        ch, cw = canvas.shape
        matrix = cv2.getRotationMatrix2D((cw / 2, ch / 2), float(rng.uniform(0, 360)), 1.0)
        canvas = cv2.warpAffine(canvas, matrix, (cw, ch), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ch, cw = canvas.shape
    if ch < h or cw < w:  # too small for the crop: scale up (nearest) first
        scale = max(h / ch, w / cw)
        canvas = cv2.resize(canvas, (max(w, round(cw * scale)), max(h, round(ch * scale))),
                            interpolation=cv2.INTER_NEAREST)
        ch, cw = canvas.shape
    top, left = int(rng.integers(ch - h + 1)), int(rng.integers(cw - w + 1))
    canvas = canvas[top:top + h, left:left + w]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    if rng.random() < 0.5:
        canvas = canvas[::-1]
    return _to_valid(canvas > 0)


class NvidiaTrainMasks:
    """Random augmented masks from the NVIDIA training set, a pure function of the seed."""

    def __init__(self, directory: str, size: int | tuple[int, int], *,
                 dilation: tuple[int, int] = (5, 47), rotate: bool = True):
        self.paths = list_train_masks(directory)
        self.size = size
        self.dilation = dilation
        self.rotate = rotate

    def __call__(self, seed: int | Sequence[int]) -> np.ndarray:
        """A mask float32 (H, W, 1), 1 = valid, for `seed` (int or sequence of ints)."""
        rng = np.random.default_rng(seed)
        start = int(rng.integers(len(self.paths)))
        for offset in range(len(self.paths)):  # an unreadable file: take the next one
            path = self.paths[(start + offset) % len(self.paths)]
            try:
                hole = read_hole_png(path, hole_is_white=False)
            except ValueError as error:
                warnings.warn(f"skipping training mask: {error}", stacklevel=2)
                continue
            return augment_train_mask(hole, rng, self.size, dilation=self.dilation,
                                      rotate=self.rotate)
        raise ValueError(f"none of the {len(self.paths)} training masks could be read.")
