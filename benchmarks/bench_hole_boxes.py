"""The time `fill.hole_boxes` takes on a speckled mask: separated dots on a 1100 x 1100 photo.

A mask of dots every `step` pixels below the first 200 rows (one hole region per dot), and with
`--corner_dot` one more dot in the top-left corner, whose box overlaps no other: the worst case for
a merge that rescans the boxes after each union. Prints one JSON line per step.

    python benchmarks/bench_hole_boxes.py --corner_dot    # step 8: 15,600 regions
    python benchmarks/bench_hole_boxes.py --steps 16,8,4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pconv_jax.inference import fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=1100)
    parser.add_argument("--steps", default="8", help="dot spacings, comma-separated")
    parser.add_argument("--corner_dot", action="store_true", help="add a dot at (0, 0)")
    args = parser.parse_args()
    for step in (int(s) for s in args.steps.split(",")):
        holes = np.zeros((args.side, args.side), bool)
        holes[200::step, ::step] = True
        holes[0, 0] = args.corner_dot
        start = time.perf_counter()
        boxes = fill.hole_boxes(holes)
        seconds = time.perf_counter() - start
        print(json.dumps({"side": args.side, "step": step, "corner_dot": args.corner_dot,
                          "regions": int(holes.sum()),
                          "fill": round(float(holes.mean()), 4), "boxes": len(boxes),
                          "seconds": round(seconds, 3)}), flush=True)


if __name__ == "__main__":
    main()
