"""Seconds per image of the classical methods (PatchMatch, OpenCV Telea and Navier-Stokes).

PatchMatch's cost grows with the hole area and the patch size, so each size is measured on one
generated mask per hole-ratio bin (the evaluation's bins), on a photograph bundled with
scikit-image. Prints one JSON line per (method, size): mean seconds per image over the bins,
and the seconds per bin.

    python benchmarks/bench_baselines.py                       # 256 and 512 px
    python benchmarks/bench_baselines.py --sizes 512 --methods patchmatch --patch_radius 5
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import ml_collections
import numpy as np
import skimage.data

from pconv_jax.data import masks
from pconv_jax.inference import methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--methods", nargs="+", default=list(methods.SETTINGS_ONLY),
                        choices=methods.SETTINGS_ONLY)
    parser.add_argument("--patch_radius", type=int, default=3, help="PatchMatch (config: 3)")
    args = parser.parse_args()

    photo = skimage.data.astronaut()  # 512x512 RGB
    for size in args.sizes:
        image = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
        image = image[None].astype(np.float32) / 255.0
        # one B mask of each bin: masks 1, 3, 5, ... of a generated set with one per cell
        test_masks = [masks.generated_test_mask(2 * b + 1, 1, size, seed=0)
                      for b in range(masks.NUM_BINS)]
        for method in args.methods:
            settings = ml_collections.ConfigDict({"eval": {"patchmatch_patch_radius":
                                                           args.patch_radius}})
            fill = methods.build(method, config=settings).inpaint
            seconds = []
            for valid in test_masks:
                start = time.perf_counter()
                fill(image, valid[None])
                seconds.append(time.perf_counter() - start)
            print(json.dumps(dict(method=method, size=size, seconds_per_image=round(
                float(np.mean(seconds)), 3), seconds_per_bin=[round(s, 3) for s in seconds])))


if __name__ == "__main__":
    main()
