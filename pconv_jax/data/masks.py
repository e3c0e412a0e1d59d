"""Random irregular hole masks and the test mask set writer.

Masks follow the project convention: float32 arrays of shape (H, W, 1) with 1 = valid (known)
pixel and 0 = hole. Holes are drawn with OpenCV as thick random-walk strokes, circles and
ellipses until the hole ratio lands in the requested interval (lo, hi]. Every mask is a pure
function of its seed.

The border rule is NVIDIA's (measured on their test set): an N mask has no hole pixel within
`border_margin(side)` pixels of the border (50 px at 512 px, scaled with the side), a B mask is
any other mask: its holes touch the border or only come close to it.

Writing a test set with the NVIDIA test-set layout (PNG, white 255 = hole)::

    python -m pconv_jax.data.masks write-test-set OUT_DIR --per_cell 1000 --size 512 --seed 0
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Literal

import cv2
import numpy as np
from absl import app, flags

from pconv_jax.data import images

# The paper's six hole-ratio bins (lo, hi]; each is split into N (holes away from the border)
# and B masks.
HOLE_RATIO_BINS: tuple[tuple[float, float], ...] = (
    (0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))
NUM_BINS = len(HOLE_RATIO_BINS)

Border = Literal["any", "avoid", "touch"]
_BORDERS = ("any", "avoid", "touch")
_MAX_SHAPES = 2000  # attempts per mask before starting again from an empty canvas

# NVIDIA's test set: every N mask keeps its holes at least 50 px from the border at 512x512.
NVIDIA_MARGIN, NVIDIA_SIDE = 50, 512


def hole_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels of a mask with 1 = valid, 0 = hole."""
    return float(np.mean(images.hole_map(mask)))


def border_margin(side: int) -> int:
    """Width of the frame an N mask keeps free of holes: 50 px at 512 px, scaled, at least 1.

    Rounded half up (128 px -> 13).
    """
    return max(1, int(NVIDIA_MARGIN * side / NVIDIA_SIDE + 0.5))


def border_distance(hole: np.ndarray) -> int | None:
    """Pixels between the image border and the nearest hole pixel (0: it touches the border).

    `hole`: boolean (H, W), True = hole. None if there is no hole.
    """
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    if rows.size == 0:
        return None
    h, w = hole.shape
    return int(min(rows[0], h - 1 - rows[-1], cols[0], w - 1 - cols[-1]))


def near_border(hole: np.ndarray) -> bool:
    """Whether a hole pixel lies within `border_margin` of the border: B if so, else N.

    `hole`: boolean (H, W), True = hole, or an in-memory mask (H, W, 1) with 1 = valid. Each
    axis uses the margin of its own side.
    """
    hole = np.asarray(hole)
    if hole.dtype != bool:
        hole = images.hole_map(hole)
    h, w = hole.shape
    my, mx = border_margin(h), border_margin(w)
    return bool(hole[:my].any() or hole[h - my:].any()
                or hole[:, :mx].any() or hole[:, w - mx:].any())


def border_label(hole: np.ndarray) -> str:
    """'B' if a hole pixel lies within `border_margin` of the border, else 'N'."""
    return "B" if near_border(hole) else "N"


def _point_near_border(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    """A point (x, y) within the border margin; on the outermost frame only sometimes."""
    side = int(rng.integers(4))
    depth = int(rng.integers(border_margin(h if side < 2 else w)))
    if side == 0:
        return int(rng.integers(w)), depth
    if side == 1:
        return int(rng.integers(w)), h - 1 - depth
    if side == 2:
        return depth, int(rng.integers(h))
    return w - 1 - depth, int(rng.integers(h))


def _random_shape(rng: np.random.Generator, h: int, w: int, scale: float,
                  start: tuple[int, int] | None) -> tuple[Callable[[np.ndarray], object],
                                                          tuple[slice, slice]]:
    """One random stroke, circle or ellipse: (draw, region), where `draw(canvas)` draws it
    (value 1 = hole) into an (h, w) canvas and `region` bounds the pixels it can touch.

    The arithmetic is on Python floats (the same IEEE doubles as NumPy's, without the per-call
    overhead of NumPy on arrays of a few numbers); only cos and sin stay NumPy's.
    """
    s = min(h, w) * scale
    u = rng.random(8).tolist()  # one call: per-scalar Generator calls would dominate the cost
    kind = 0 if start is not None or u[0] < 0.6 else (1 if u[0] < 0.8 else 2)
    if start is None:
        margin = 0.05 * min(h, w)
        start = (int(margin + u[1] * (w - 2 * margin)), int(margin + u[2] * (h - 2 * margin)))
    x, y = start
    if kind == 0:  # random-walk stroke; OpenCV draws thick lines with round caps
        thickness = max(1, int((0.02 + 0.07 * u[3]) * s))
        steps = 1 + int(u[4] * 6)
        # Turns, then lengths: one call (the same numbers as two); low + (high - low) · random()
        # is what rng.uniform computes.
        r = rng.random(2 * steps).tolist()
        turns = [u[5] * 2 * np.pi] + [-np.pi / 2 + (np.pi / 2 - -np.pi / 2) * t
                                      for t in r[1:steps]]
        angles = np.array(list(itertools.accumulate(turns)))  # left to right, as np.cumsum
        cos, sin = np.cos(angles).tolist(), np.sin(angles).tolist()
        xs, ys, px, py = [x], [y], float(x), float(y)
        for t, c, si in zip(r[steps:], cos, sin):
            length = (0.05 + (0.3 - 0.05) * t) * s
            px, py = px + length * c, py + length * si
            xs.append(int(min(max(px, 0.0), w - 1)))
            ys.append(int(min(max(py, 0.0), h - 1)))
        pts = np.array([xs, ys], np.int32).T.copy()
        reach = thickness + 2
        region = (slice(max(min(ys) - reach, 0), max(ys) + reach + 1),
                  slice(max(min(xs) - reach, 0), max(xs) + reach + 1))
        return functools.partial(cv2.polylines, pts=[pts], isClosed=False, color=1,
                                 thickness=thickness), region
    if kind == 1:
        radius = max(1, int((0.02 + 0.08 * u[3]) * s))
        draw = functools.partial(cv2.circle, center=start, radius=radius, color=1, thickness=-1)
    else:
        axes = (max(1, int((0.02 + 0.12 * u[3]) * s)), max(1, int((0.01 + 0.07 * u[4]) * s)))
        radius = max(axes)
        draw = functools.partial(cv2.ellipse, center=start, axes=axes, angle=180 * u[5],
                                 startAngle=0, endAngle=360, color=1, thickness=-1)
    reach = radius + 2
    return draw, (slice(max(y - reach, 0), y + reach + 1), slice(max(x - reach, 0), x + reach + 1))


def _draw_holes(rng: np.random.Generator, h: int, w: int, lo: float, hi: float,
                border: str, total: int) -> np.ndarray | None:
    """One attempt at a uint8 hole map (1 = hole) whose hole count lies in (lo, hi] · total.

    Returns None if it failed.
    """
    target = rng.uniform(lo, hi)
    canvas = np.zeros((h, w), np.uint8)
    holes = 0
    scale = 0.6 + 0.8 * target  # larger targets: larger shapes, fewer draws
    for _ in range(_MAX_SHAPES):
        start = _point_near_border(rng, h, w) if border == "touch" and holes == 0 else None
        draw, region = _random_shape(rng, h, w, scale, start)
        # Only the shape's region can change: back up and count there, not the whole canvas.
        patch = canvas[region]
        backup = patch.copy()
        draw(canvas)
        new_holes = holes + int(np.count_nonzero(patch)) - int(np.count_nonzero(backup))
        if new_holes > hi * total:
            patch[...] = backup
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
      border: 'any'; 'avoid' (no hole pixel within `border_margin` of the border, the N
        masks); 'touch' (at least one, the B masks: some touch the border, some only come close).

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
    my, mx = border_margin(h), border_margin(w)
    inner_area = max(0, h - 2 * my) * max(0, w - 2 * mx)
    if border == "avoid" and inner_area <= lo * h * w:
        raise ValueError(f"a {h}x{w} mask keeping holes {my} px from the border cannot have a "
                         f"hole ratio above {lo}; use border='any' or a larger size.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(100):
        # 'avoid': no hole pixel within the margin (NVIDIA's N masks). A quarter of the 'touch'
        # masks are drawn inside a thinner frame: they only come close to the border, as some of
        # NVIDIA's B masks do.
        frame = (my, mx) if border == "avoid" else None
        if border == "touch" and min(my, mx) > 1 and rng.random() < 0.25:
            frame = (int(rng.integers(1, my)), int(rng.integers(1, mx)))
        if frame is not None:
            fy, fx = frame
            # Aim below what the inner area holds (a nearly full frame is hard to draw).
            room = (h - 2 * fy) * (w - 2 * fx) / (h * w)
            reach = min(hi, lo + 0.9 * (room - lo))
            inner = _draw_holes(rng, h - 2 * fy, w - 2 * fx, lo, reach, "any", h * w)
            if inner is None:
                continue
            hole = np.zeros((h, w), np.uint8)
            hole[fy:h - fy, fx:w - fx] = inner
        else:
            hole = _draw_holes(rng, h, w, lo, hi, border, h * w)
        if hole is not None and (border != "touch" or near_border(hole > 0)):
            return images.to_valid_mask(hole > 0)
    raise RuntimeError(f"could not draw a {h}x{w} mask with hole ratio in {hole_ratio_range} "
                       f"and border={border!r}; widen the range or use a larger size.")


def bin_and_border(index: int, per_cell: int) -> tuple[int, str]:
    """(bin index 0..5, 'N' or 'B') of file `index` in the NVIDIA test-set layout.

    Files come in blocks of 2·per_cell per hole-ratio bin; the first per_cell of a block keep
    their holes away from the border (N, see `border_margin`), the next per_cell do not (B).
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
    images.write_mask(os.path.join(out_dir, f"{index:05d}.png"), mask, holes="white")


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


def define_flags() -> None:
    """The command's flags (defined by the command only, so that importing this module doesn't)."""
    flags.DEFINE_integer("per_cell", 1000, "masks per bin and N/B cell")
    flags.DEFINE_integer("size", 512, "side of the square masks")
    flags.DEFINE_integer("seed", 0, "seed of the set")
    flags.DEFINE_integer("workers", 1, "processes drawing masks")


def main(argv: Sequence[str]) -> None:
    """`python -m pconv_jax.data.masks write-test-set OUT_DIR [--per_cell K] [--size S] ...`."""
    if len(argv) != 3 or argv[1] != "write-test-set":
        raise app.UsageError("usage: python -m pconv_jax.data.masks write-test-set OUT_DIR "
                             "[--per_cell K] [--size S] [--seed N] [--workers W]")
    out_dir, args = argv[2], flags.FLAGS
    count = write_test_set(out_dir, per_cell=args.per_cell, size=args.size,
                           seed=args.seed, workers=args.workers)
    print(f"wrote {count} masks to {out_dir}")


if __name__ == "__main__":
    from pconv_jax import cli
    define_flags()
    cli.run(main)
