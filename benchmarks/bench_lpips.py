"""LPIPS (VGG) throughput: image pairs per second at each size, batched and jit-compiled.

Random VGG16 weights and random calibration weights (the time does not depend on them). Times
are medians over `--repeats` runs after a compile and warm-up run; one JSON line per size.

    python benchmarks/bench_lpips.py                            # 256 and 512, batch 8
    python benchmarks/bench_lpips.py --sizes 64 --batch 2 --repeats 1    # a quick check on CPU
    python benchmarks/bench_lpips.py --precision default        # GPUs: reduced-precision convs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pconv_jax.evaluation.lpips import CHANNELS, make_lpips
from pconv_jax.network.vgg16 import random_vgg16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="highest", choices=("highest", "default"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    calibration = tuple(rng.uniform(0, 1, c).astype(np.float32) for c in CHANNELS)
    lpips = make_lpips(random_vgg16(jax.random.key(0), blocks=5), calibration, args.precision)
    for size in args.sizes:
        shape = (args.batch, size, size, 3)
        a, b = (jnp.asarray(rng.random(shape), jnp.float32) for _ in range(2))
        start = time.perf_counter()
        jax.block_until_ready(lpips(a, b))
        first_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(lpips(a, b))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps({"metric": "lpips_vgg", "size": size, "batch": args.batch,
                          "precision": args.precision, "backend": jax.default_backend(),
                          "device": jax.devices()[0].device_kind,
                          "pairs_per_s": round(args.batch / median, 2),
                          "median_s": round(median, 4), "compile_and_first_s": round(first_s, 2)}))


if __name__ == "__main__":
    main()
