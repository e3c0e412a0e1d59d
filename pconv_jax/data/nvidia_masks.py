"""Readers for the NVIDIA irregular mask sets (and test sets written by `pconv_jax.data.masks`).

- Training set (`disocclusion_img_mask/*.png`, black = hole): `list_train_masks`, then
  `augment_train_mask` (random dilation, rotation, crop, flips; nearest-neighbour only, binary).
- Test set (`testing_mask_dataset/00000.png` ... , white = hole): `scan_test_masks` labels each
  file with its hole-ratio bin and N/B flag from its index (blocks of 2·K per bin, K = count / 12),
  checks the label against the pixels (N: no hole pixel within `masks.border_margin` of the
  border, 50 px at 512 px; B: the rest) and reports files that disagree or cannot be read.
  `load_test_mask` returns the mask as float32 (H, W, 1), 1 = valid.

Files are read by `pconv_jax.data.images`.
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

from pconv_jax.data import images
from pconv_jax.data.images import Holes
from pconv_jax.data.masks import (
    HOLE_RATIO_BINS,
    NUM_BINS,
    bin_and_border,
    border_distance,
    border_margin,
    near_border,
)

_TEST_NAME = re.compile(r"^(\d{5})\.png$")


# ----------------------------------------------------------------------------- test set

@dataclasses.dataclass(frozen=True)
class TestMaskRecord:
    """One file of a test mask set, labelled from its index and measured from its pixels."""

    __test__ = False  # not a pytest test class despite the name

    path: str
    index: int
    bin_index: int                 # 0..5
    bin_range: tuple[float, float]  # hole ratio (lo, hi]
    border: str                    # 'N' (holes away from the border) or 'B', from the index
    hole_ratio: float              # measured from the pixels
    border_distance: int | None    # px between the border and the nearest hole (None: no hole)
    near_border: bool              # a hole within `masks.border_margin` of the border (B)


@dataclasses.dataclass(frozen=True)
class LeftOutFile:
    """A file of a test set that `scan_test_masks` left out, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class TestMaskSet:
    """Result of `scan_test_masks`: usable records and the files that were left out."""

    __test__ = False

    records: list[TestMaskRecord]
    per_cell: int                                     # K: masks per bin and N/B cell
    left_out: list[LeftOutFile] = dataclasses.field(default_factory=list)

    def select(self, bin_index: int | None = None, border: str | None = None
               ) -> list[TestMaskRecord]:
        """Records of one bin and/or one border flag."""
        return [r for r in self.records
                if (bin_index is None or r.bin_index == bin_index)
                and (border is None or r.border == border)]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def file_indices(self) -> np.ndarray:
        """Each record's position in the set's file numbering (00000.png = 0)."""
        return np.array([r.index for r in self.records])

    @property
    def bins(self) -> np.ndarray:
        return np.array([r.bin_index for r in self.records])

    @property
    def labels(self) -> tuple[str, ...]:
        """Each record's 'N' or 'B'."""
        return tuple(r.border for r in self.records)

    def load(self, indices: Sequence[int], size: tuple[int, int]) -> np.ndarray:
        """Masks (B, H, W, 1) float32, 1 = valid, of the records at `indices`, resized
        nearest-neighbour to `size`."""
        return load_test_masks([self.records[i] for i in indices], tuple(size))


def _check_file(path: str, index: int, per_cell: int, holes: Holes, tolerance: float,
                check_border: bool) -> tuple[TestMaskRecord | None, LeftOutFile | None]:
    bin_index, border = bin_and_border(index, per_cell)
    lo, hi = HOLE_RATIO_BINS[bin_index]
    try:
        hole = images.read_hole_map(path, holes)
    except (OSError, ValueError) as error:
        return None, LeftOutFile(path, f"unreadable: {error}")
    ratio = float(hole.mean())
    near = near_border(hole)
    record = TestMaskRecord(path, index, bin_index, (lo, hi), border, ratio,
                            border_distance(hole), near)
    if not lo - tolerance < ratio <= hi + tolerance:
        return record, LeftOutFile(path, f"index {index} belongs to bin ({lo}, {hi}] but its "
                                         f"hole ratio is {ratio:.4f}")
    if check_border and near != (border == "B"):
        margin = border_margin(min(hole.shape))
        return record, LeftOutFile(
            path, f"index {index} is labelled {border} but its nearest hole pixel is "
                  f"{record.border_distance} px from the border ({border} needs "
                  f"{'less than' if border == 'B' else 'at least'} {margin} px)")
    return record, None


def scan_test_masks(directory: str, *, holes: Holes = "white", tolerance: float = 0.005,
                    check_border: bool = True, workers: int = 8) -> TestMaskSet:
    """Labels every mask of a test set and cross-checks the labels against the pixels.

    The set holds 12·K files named 00000.png ...; file i belongs to bin i // (2K) and is N
    (no hole pixel within `masks.border_margin` of the border: 50 px at 512 px) if
    i % (2K) < K, else B. The NVIDIA set has K = 1000.

    Args:
      directory: the folder of PNGs (e.g. `testing_mask_dataset/`).
      holes: 'white' for the test convention (white = hole), 'black' for black = hole.
      tolerance: slack on the bin limits when checking the measured hole ratio.
      check_border: also check the N/B label against the pixels.
      workers: threads reading files.

    Returns:
      A `TestMaskSet`; mislabelled or unreadable files are left out of `records`, listed with
      the reason in `left_out` and announced with a warning. A set with no usable file is a
      ValueError.
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
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:  # decoding drops the GIL
        results = list(pool.map(
            lambda item: _check_file(os.path.join(directory, item[1]), item[0], per_cell,
                                     holes, tolerance, check_border), indexed))
    records = [record for record, problem in results if problem is None]
    left_out = [problem for _, problem in results if problem is not None]
    if left_out:
        warnings.warn(f"{len(left_out)} of {count} test masks in {directory!r} were left out "
                      f"(mislabelled or unreadable), e.g. {left_out[0]}", stacklevel=2)
    if not records:
        shown = "; ".join(str(f) for f in left_out[:2])
        more = f"; and {len(left_out) - 2} more" if len(left_out) > 2 else ""
        raise ValueError(f"no usable masks in {directory} ({len(left_out)} files left out: "
                         f"{shown}{more})")
    return TestMaskSet(records, per_cell, left_out)


def load_test_mask(path: str | TestMaskRecord, size: int | tuple[int, int] | None = None, *,
                   holes: Holes = "white") -> np.ndarray:
    """Loads a test mask as float32 (H, W, 1), 1 = valid; resized (nearest) to `size` if given."""
    if isinstance(path, TestMaskRecord):
        path = path.path
    return images.read_mask(path, holes, size)


def load_test_masks(records: Sequence[TestMaskRecord], size: int | tuple[int, int] | None = None,
                    *, holes: Holes = "white") -> np.ndarray:
    """Stacks masks of several records: float32 (N, H, W, 1), 1 = valid."""
    return np.stack([load_test_mask(r, size, holes=holes) for r in records])


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
    return images.to_valid_mask(canvas > 0)


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
                hole = images.read_hole_map(path, holes="black")
            except (OSError, ValueError) as error:
                warnings.warn(f"skipping training mask: {error}", stacklevel=2)
                continue
            return augment_train_mask(hole, rng, self.size, dilation=self.dilation,
                                      rotate=self.rotate)
        raise ValueError(f"none of the {len(self.paths)} training masks could be read.")
