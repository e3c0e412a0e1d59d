"""Images/s of the FID Inception-v3 (`make_inception_fn`: resize to 299x299 + network).

Times are medians over `--repeats` calls after a warm-up (which compiles); random weights (the
time does not depend on them). Prints one JSON line per image size.

    python benchmarks/bench_inception.py                       # 256² and 512², batch 8
    python benchmarks/bench_inception.py --sizes 512 --batch 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from pconv_jax.evaluation.fid import make_inception_fn
from pconv_jax.network.inception import random_inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    features = make_inception_fn(random_inception(jax.random.key(0)))
    rng = np.random.default_rng(0)
    for size in args.sizes:
        images = rng.random((args.batch, size, size, 3), np.float32)
        start = time.perf_counter()
        features(images)  # compile + warm-up (returns NumPy: the work is done)
        warmup_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            features(images)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps({
            "bench": "inception_features", "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "size": size, "batch": args.batch,
            "median_s": round(median, 4), "images_per_s": round(args.batch / median, 2),
            "first_call_s": round(warmup_s, 2),
        }))


if __name__ == "__main__":
    main()
