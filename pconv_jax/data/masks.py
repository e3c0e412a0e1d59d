"""Random irregular hole masks and the test mask set writer.

Masks follow the project convention: float32 arrays of shape (H, W, 1) with 1 = valid (known)
pixel and 0 = hole. Holes are drawn with OpenCV as thick random-walk strokes, circles and
ellipses until the hole ratio lands in the requested interval (lo, hi]. Every mask is a pure
function of its seed.

Writing a test set with the NVIDIA test-set layout (PNG, white 255 = hole)::

    python -m pconv_jax.data.masks write-test-set OUT_DIR --per-cell 1000 --size 512 --seed 0
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Literal

import cv2
import ml_collections
import numpy as np

# The paper's six hole-ratio bins (lo, hi]; each is split into N (no border touch) and B masks.
HOLE_RATIO_BINS: tuple[tuple[float, float], ...] = (
    (0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))
NUM_BINS = len(HOLE_RATIO_BINS)

Border = Literal["any", "avoid", "touch"]
_BORDERS = ("any", "avoid", "touch")
_MAX_SHAPES = 2000  # attempts per mask before starting again from an empty canvas


def default_mask_config() -> ml_collections.ConfigDict:
    """Returns the default `config.masks`.

    Keys:
      source: 'generated' (drawn on the fly by `generate_mask`) or 'nvidia' (the NVIDIA
        irregular training masks, augmented by `nvidia_masks.augment_train_mask`).
      hole_ratio_min, hole_ratio_max: generated masks have a hole ratio in (min, max].
      border: 'any', 'avoid' (holes never touch the image border) or 'touch' (they do).
      nvidia_train_dir: folder holding the NVIDIA training masks (`disocclusion_img_mask/*.png`
        or the PNGs themselves); black = hole.
      nvidia_dilation_min, nvidia_dilation_max: random dilation kernel size in pixels.
      nvidia_rotate: rotate NVIDIA training masks by a random angle.
      test_dir: a test mask set (NVIDIA `testing_mask_dataset` or one written by
        `write-test-set`), white = hole; read by `nvidia_masks.scan_test_masks`.
    """
    config = ml_collections.ConfigDict()
    config.source = "generated"
    config.hole_ratio_min = 0.01
    config.hole_ratio_max = 0.6
    config.border = "any"
    config.nvidia_train_dir = ""
    config.nvidia_dilation_min = 5
    config.nvidia_dilation_max = 47
    config.nvidia_rotate = True
    config.test_dir = ""
    return config


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels of a mask with 1 = valid, 0 = hole."""
    return float(np.mean(np.asarray(mask) < 0.5))


def touches_border(mask: np.ndarray) -> bool:
    """Whether any hole pixel (value < 0.5, 1 = valid) lies on the outermost pixel frame."""
    mask = np.asarray(mask)
    return _hole_touches_border((mask[..., 0] if mask.ndim == 3 else mask) < 0.5)


def _hole_touches_border(hole: np.ndarray) -> bool:
    return bool(hole[0].any() or hole[-1].any() or hole[:, 0].any() or hole[:, -1].any())


def _point_on_border(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    side = rng.integers(4)
    if side == 0:
        return int(rng.integers(w)), 0
    if side == 1:
        return int(rng.integers(w)), h - 1
    if side == 2:
        return 0, int(rng.integers(h))
    return w - 1, int(rng.integers(h))


def _draw_shape(canvas: np.ndarray, rng: np.random.Generator, scale: float,
                start: tuple[int, int] | None) -> None:
    """Draws one random stroke, circle or ellipse (value 1 = hole) into `canvas`."""
    h, w = canvas.shape
    s = min(h, w) * scale
    u = rng.random(8)  # one call: per-scalar Generator calls dominate the cost otherwise
    kind = 0 if start is not None or u[0] < 0.6 else (1 if u[0] < 0.8 else 2)
    if start is None:
        margin = 0.05 * min(h, w)
        start = (int(margin + u[1] * (w - 2 * margin)), int(margin + u[2] * (h - 2 * margin)))
    if kind == 0:  # random-walk stroke; OpenCV draws thick lines with round caps
        thickness = max(1, int((0.02 + 0.07 * u[3]) * s))
        steps = 1 + int(u[4] * 6)
        # low + (high - low) * random(): what rng.uniform computes, without its call overhead
        turns = -np.pi / 2 + (np.pi / 2 - -np.pi / 2) * rng.random(steps)
        turns[0] = u[5] * 2 * np.pi
        lengths = (0.05 + (0.3 - 0.05) * rng.random(steps)) * s
        angles = np.cumsum(turns)
        xs = start[0] + np.cumsum(lengths * np.cos(angles))
        ys = start[1] + np.cumsum(lengths * np.sin(angles))
        pts = np.empty((steps + 1, 2), np.int32)
        pts[0] = start
        # minimum/maximum: np.clip's own overhead is most of its cost on these short arrays
        pts[1:, 0] = np.minimum(np.maximum(xs, 0), w - 1)
        pts[1:, 1] = np.minimum(np.maximum(ys, 0), h - 1)
        cv2.polylines(canvas, [pts], isClosed=False, color=1, thickness=thickness)
    elif kind == 1:
        cv2.circle(canvas, start, max(1, int((0.02 + 0.08 * u[3]) * s)), color=1, thickness=-1)
    else:
        axes = (max(1, int((0.02 + 0.12 * u[3]) * s)), max(1, int((0.01 + 0.07 * u[4]) * s)))
        cv2.ellipse(canvas, start, axes, 180 * u[5], 0, 360, color=1, thickness=-1)


def _draw_holes(rng: np.random.Generator, h: int, w: int, lo: float, hi: float,
                border: str, total: int) -> np.ndarray | None:
    """One attempt at a uint8 hole map (1 = hole) whose hole count lies in (lo, hi] · total.

    Returns None if it failed.
    """
    target = rng.uniform(lo, hi)
    canvas = np.zeros((h, w), np.uint8)
    backup = np.empty_like(canvas)
    holes = 0
    scale = 0.6 + 0.8 * target  # larger targets: larger shapes, fewer draws
    for _ in range(_MAX_SHAPES):
        np.copyto(backup, canvas)
        start = _point_on_border(rng, h, w) if border == "touch" and holes == 0 else None
        _draw_shape(canvas, rng, scale, start)
        new_holes = int(np.count_nonzero(canvas))
        if new_holes > hi * total:
            np.copyto(canvas, backup)
            scale = max(scale * 0.7, 0.02)
            continue
        holes = new_holes
        if holes >= target * total and holes > lo * total:
            return canvas
    return None


def generate_mask(seed: int | Sequence[int] | np.random.Generator,
                  size: int | tuple[int, int], *,
                  hole_ratio_range: tuple[float, float] = (0.01, 0.6),
                  border: Border = "any") -> np.ndarray:
    """Draws a random irregular mask.

    Args:
      seed: an int, a sequence of non-negative ints (e.g. (seed, step, i)) or a NumPy Generator.
      size: side length, or (height, width).
      hole_ratio_range: (lo, hi); the hole ratio of the result lies in (lo, hi].
      border: 'any'; 'avoid' (no hole pixel on the outermost frame, the paper's N masks);
        'touch' (at least one, the B masks).

    Returns:
      float32 array (H, W, 1), 1 = valid, 0 = hole.
    """
    h, w = (size, size) if isinstance(size, int) else size
    lo, hi = hole_ratio_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(
            f"hole_ratio_range must satisfy 0 <= lo < hi <= 1, got {hole_ratio_range}.")
    if (hi - lo) * h * w < 1:
        raise ValueError(f"hole_ratio_range {hole_ratio_range} holds no pixel count at {h}x{w}.")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(100):
        if border == "avoid":
            # Draw inside a frame of random width: shapes end short of the border.
            margin = max(1, int(rng.uniform(0.01, 0.05) * min(h, w)))
            if (h - 2 * margin) * (w - 2 * margin) < lo * h * w:
                margin = 1
            inner = _draw_holes(rng, h - 2 * margin, w - 2 * margin, lo, hi, "any", h * w)
            if inner is None:
                continue
            hole = np.zeros((h, w), np.uint8)
            hole[margin:h - margin, margin:w - margin] = inner
        else:
            hole = _draw_holes(rng, h, w, lo, hi, border, h * w)
        if hole is not None and (border != "touch" or _hole_touches_border(hole)):
            return (1 - hole).astype(np.float32)[..., None]
    raise RuntimeError(f"could not draw a {h}x{w} mask with hole ratio in {hole_ratio_range} "
                       f"and border={border!r}; widen the range or use a larger size.")


def bin_and_border(index: int, per_cell: int) -> tuple[int, str]:
    """(bin index 0..5, 'N' or 'B') of file `index` in the NVIDIA test-set layout.

    Files come in blocks of 2·per_cell per hole-ratio bin; the first per_cell of a block do not
    touch the border (N), the next per_cell do (B).
    """
    if not 0 <= index < 2 * NUM_BINS * per_cell:
        raise ValueError(f"index {index} is outside a test set of {2 * NUM_BINS * per_cell} masks.")
    bin_index, within = divmod(index, 2 * per_cell)
    return bin_index, ("N" if within < per_cell else "B")


def generated_test_mask(index: int, per_cell: int, size: int, seed: int) -> np.ndarray:
    """Mask number `index` of the generated test set (float32 (size, size, 1), 1 = valid)."""
    bin_index, label = bin_and_border(index, per_cell)
    return generate_mask((seed, index), size, hole_ratio_range=HOLE_RATIO_BINS[bin_index],
                         border="avoid" if label == "N" else "touch")


def _write_one(args: tuple[str, int, int, int, int]) -> None:
    out_dir, index, per_cell, size, seed = args
    mask = generated_test_mask(index, per_cell, size, seed)
    png = np.where(mask[..., 0] < 0.5, 255, 0).astype(np.uint8)  # test convention: white = hole
    cv2.imwrite(os.path.join(out_dir, f"{index:05d}.png"), png)


def write_test_set(out_dir: str, *, per_cell: int = 1000, size: int = 512, seed: int = 0,
                   workers: int = 1) -> int:
    """Writes 6 bins × {N, B} × per_cell PNGs (00000.png, ...; white = hole) to `out_dir`.

    Returns the number of files written.
    """
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}.")
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(out_dir, i, per_cell, size, seed) for i in range(2 * NUM_BINS * per_cell)]
    if workers > 1:
        import multiprocessing
        with multiprocessing.Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=64)
    else:
        for job in jobs:
            _write_one(job)
    return len(jobs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pconv_jax.data.masks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write-test-set", help="write a test mask set (white = hole)")
    write.add_argument("out_dir")
    write.add_argument("--per-cell", type=int, default=1000, help="masks per bin and N/B cell")
    write.add_argument("--size", type=int, default=512)
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--workers", type=int, default=1, help="processes drawing masks")
    args = parser.parse_args(argv)
    count = write_test_set(args.out_dir, per_cell=args.per_cell, size=args.size,
                           seed=args.seed, workers=args.workers)
    print(f"wrote {count} masks to {args.out_dir}")


if __name__ == "__main__":
    main()
