"""How much of a hole a network cannot reach, and what filling it from halved copies costs.

Which pixels a partial-convolution UNet reaches depends only on its architecture and the mask,
not on its weights, so an untrained network gives the figures. Prints one JSON line per case:
the share of hole pixels beyond reach (filled from halved copies) and the seconds of one
`ModelInpainter` call with and without compilation.

    python benchmarks/bench_unreached.py                           # demo network, 512 px masks
    python benchmarks/bench_unreached.py --depth 7 --width 512 --height 512 --base_width 64
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from flax import nnx

from pconv_jax import PConvUNet
from pconv_jax.data import masks
from pconv_jax.inference.model_inpainter import ModelInpainter
from pconv_jax.network.unet import paper_widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=4, help="the demo network: 4")
    parser.add_argument("--base_width", type=int, default=16)
    parser.add_argument("--max_width", type=int, default=64)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--masks", type=int, default=2, help="masks per hole-ratio bin")
    args = parser.parse_args()

    model = PConvUNet(depth=args.depth, rngs=nnx.Rngs(0),
                      widths=paper_widths(args.depth, args.base_width, args.max_width))
    image = np.random.default_rng(0).random((1, args.height, args.width, 3), np.float32)
    fill = ModelInpainter(model, warn=False)
    fill(image, np.ones((1, args.height, args.width, 1), np.float32))  # compile the first level
    for bin_index, bin_range in enumerate(masks.HOLE_RATIO_BINS):
        shares, seconds = [], []
        for i in range(args.masks):
            mask = masks.generate_mask((bin_index, i), (args.height, args.width),
                                       hole_ratio_range=bin_range, border="touch")[None]
            before = fill.unreached_pixels, fill.hole_pixels
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fill(image, mask)
            seconds.append(time.perf_counter() - start)
            shares.append((fill.unreached_pixels - before[0]) / (fill.hole_pixels - before[1]))
        print(json.dumps(dict(depth=args.depth, size=[args.height, args.width],
                              hole_ratio=list(bin_range), masks=args.masks,
                              unreached_share=[round(s, 4) for s in shares],
                              seconds=[round(s, 3) for s in seconds])), flush=True)


if __name__ == "__main__":
    main()
