"""Hole L1 of fills at three photo sizes: a network, a flat fill of each hole's border colour,
PatchMatch.

Photos: scikit-image's astronaut, coffee and chelsea, resized to 512 x 512, 1600 x 1200 and
6000 x 4000; on each, seeded strokes 20-120 px wide (polylines 80-400 px long). Each method
fills the photo as `inpaint.py` and the app do (`fill.fill_photo`: a network around its holes
at its training side, PatchMatch whole up to `--max_side`, crop by crop beyond); "network,
whole" is the network on the whole photo up to `--max_side` (the path before the training side
counted). "flat" fills each hole region with the mean colour of a 5 px ring around it. Hole L1:
the mean absolute difference to the photo over the hole pixels, in % of the pixel range.
Prints a Markdown table (method x size, the mean over the photos, and the seconds) and writes a
panel of one stroke per size, zoomed: [photo with holes | network | flat | PatchMatch].

    python train.py --config configs/demo.py      # the demo network, workdirs/demo_train
    python benchmarks/bench_fill_sizes.py --workdir workdirs/demo_train --panel docs/fill_sizes.jpg
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import skimage.data

from pconv_jax.data import images
from pconv_jax.inference import fill, methods, model_inpainter

SIZES = ((512, 512), (1600, 1200), (6000, 4000))  # (width, height)
PHOTOS = ("astronaut", "coffee", "chelsea")


def strokes(h: int, w: int, seed: int, count: int = 4) -> np.ndarray:
    """(H, W, 1) valid mask (1 = valid) with `count` strokes 20-120 px wide."""
    rng = np.random.default_rng(seed)
    holes = np.zeros((h, w), np.uint8)
    for _ in range(count):
        width = int(rng.integers(20, 121))
        length = int(rng.integers(80, 401))
        start = rng.integers((width, width), (w - width, h - width))
        points = [start]
        for _ in range(2):
            angle = rng.uniform(0, 2 * np.pi)
            step = np.array([np.cos(angle), np.sin(angle)]) * length / 2
            points.append(np.clip(points[-1] + step, width, (w - width, h - width)))
        cv2.polylines(holes, [np.round(points).astype(np.int32)], False, 1, width)
    return (holes == 0).astype(np.float32)[..., None]


def flat_fill(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each hole region filled with the mean colour of a 5 px ring of known pixels around it."""
    holes = (valid[..., 0] == 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=8)
    result = image.copy()
    kernel = np.ones((11, 11), np.uint8)
    for i in range(1, count):
        x, y, w, h = stats[i, :4]
        y0, x0 = max(0, y - 6), max(0, x - 6)
        region = labels[y0:y + h + 6, x0:x + w + 6] == i
        ring = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & (holes[
            y0:y + h + 6, x0:x + w + 6] == 0)
        colour = image[y0:y + h + 6, x0:x + w + 6][ring].mean(axis=0)
        result[y0:y + h + 6, x0:x + w + 6][region] = colour
    return result


def hole_l1(result: np.ndarray, image: np.ndarray, valid: np.ndarray) -> float:
    hole = valid[..., 0] == 0
    return float(np.abs(result[hole] - image[hole]).mean() * 100)


def photo(name: str, w: int, h: int) -> np.ndarray:
    """A scikit-image photo resized to (h, w, 3) float32 in [0, 1] (cropped to the aspect)."""
    rgb = getattr(skimage.data, name)()
    ph, pw = rgb.shape[:2]
    scale = max(w / pw, h / ph)
    resized = cv2.resize(rgb, (max(w, round(pw * scale)), max(h, round(ph * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y0, x0 = (resized.shape[0] - h) // 2, (resized.shape[1] - w) // 2
    return images.to_float(resized[y0:y0 + h, x0:x0 + w])


def zoom(image: np.ndarray, box: tuple[int, int, int, int], side: int = 220) -> np.ndarray:
    y0, x0, y1, x1 = box
    return cv2.resize(image[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a trained workdir (the network)")
    parser.add_argument("--max_side", type=int, default=fill.MAX_SIDE)
    parser.add_argument("--panel", help="write the panel here (.jpg keeps it small)")
    args = parser.parse_args()

    network = methods.build("model", workdir=args.workdir, warn=False,
                            pad_side=model_inpainter.bucket_side)
    whole = methods.Method("whole", "network, whole", network.inpaint)  # no training side
    patchmatch = methods.build("patchmatch")
    fills = {
        f"network ({network.training_size} px), around the holes":
            lambda image, valid: fill.fill_photo(network, image, valid, args.max_side),
        "network, whole photo": lambda image, valid: fill.fill_photo(whole, image, valid,
                                                                     args.max_side),
        "flat (border ring's mean)": flat_fill,
        "PatchMatch": lambda image, valid: fill.fill_photo(patchmatch, image, valid,
                                                           args.max_side),
    }
    l1 = {name: {} for name in fills}
    seconds = {name: {} for name in fills}
    rows = []
    for w, h in SIZES:
        size = f"{w}x{h}"
        per_method = {name: [] for name in fills}
        for p, name in enumerate(PHOTOS):
            image = photo(name, w, h)
            valid = strokes(h, w, seed=p)
            results = {}
            for method, fn in fills.items():
                start = time.perf_counter()
                results[method] = fn(image, valid)
                seconds[method][size] = seconds[method].get(size, 0) + time.perf_counter() - start
                per_method[method].append(hole_l1(results[method], image, valid))
                assert (results[method][valid[..., 0] > 0] == image[valid[..., 0] > 0]).all()
            if p == 0:  # the panel's row: the first stroke's crop, zoomed
                box = fill.hole_boxes(valid[..., 0] == 0)[0]
                shown = np.where(valid > 0, image, 1.0)
                tiles = [shown] + [results[m] for m in fills if m != "network, whole photo"]
                rows.append(np.concatenate([zoom(t, box) for t in tiles], axis=1))
        for method in fills:
            l1[method][size] = float(np.mean(per_method[method]))
        print(f"{size}: " + ", ".join(f"{m} {l1[m][size]:.2f}" for m in fills), flush=True)

    sizes = [f"{w}x{h}" for w, h in SIZES]
    print("\n| hole L1 (%), mean of 3 photos | " + " | ".join(sizes) + " | seconds (3 photos) |")
    print("|---|" + "---:|" * (len(sizes) + 1))
    for method in fills:
        times = " / ".join(f"{seconds[method][s]:.1f}" for s in sizes)
        print(f"| {method} | " + " | ".join(f"{l1[method][s]:.2f}" for s in sizes)
              + f" | {times} |")
    if args.panel:
        gap = np.ones((6, rows[0].shape[1], 3), np.float32)
        panel = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
        images.write_image(args.panel, panel)
        print(f"\nwrote {args.panel} (rows: {', '.join(sizes)}; columns: photo with holes, "
              f"network around the holes, flat, PatchMatch)")


if __name__ == "__main__":
    main()
