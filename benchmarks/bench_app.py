"""The web app's response time: first request, a repeated one, and the bare network forward.

For each side S it times what the Inpaint button runs (`app.respond`: mask from the painted
layer, padding to a bucket, the network, the composite, the PNG) on an S x S photo (the first
call compiles), then on photos of similar sizes (same bucket: no compilation), next to the
jitted network alone on the bucket's padded arrays. Prints one JSON line per side.

    python benchmarks/bench_app.py --workdir workdirs/demo_train
    python benchmarks/bench_app.py --config configs/places2.py --sizes 512,1024  # random weights
    python benchmarks/bench_app.py --config configs/demo.py --sizes 128,256      # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import cv2
import numpy as np
from flax import nnx

from pconv_jax import config as config_lib
from pconv_jax.inference import app, methods, model_inpainter
from pconv_jax.network.unet import PConvUNet


def network_method(workdir: str | None, config_spec: str | None) -> methods.Method:
    """The trained network of a workdir, or a config's network with random weights."""
    if workdir:
        return app.load_methods([workdir])[0]
    model = PConvUNet.from_config(config_lib.load_config(config_spec).model, rngs=nnx.Rngs(0))
    network = model_inpainter.ModelInpainter(model, pad_side=model_inpainter.bucket_side)
    return methods.Method("random", "random weights", network)


def photo_and_strokes(h: int, w: int, seed: int) -> tuple[np.ndarray, dict]:
    """A smooth random photo and an editor value with a few painted strokes (RGBA layer)."""
    rng = np.random.default_rng(seed)
    photo = cv2.resize(rng.integers(0, 256, (8, 8, 3), np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    layer = np.zeros((h, w, 4), np.uint8)
    for _ in range(4):
        a, b = rng.integers(0, (w, h), 2), rng.integers(0, (w, h), 2)
        cv2.line(layer, tuple(int(v) for v in a), tuple(int(v) for v in b), (255, 0, 255, 255),
                 max(2, min(h, w) // 40))
    return photo, {"background": photo, "layers": [layer], "composite": None}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a trained workdir (else --config, random weights)")
    parser.add_argument("--config", default="configs/demo.py", help="config file[:arg]")
    parser.add_argument("--sizes", default="512,1024", help="photo sides, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    method = network_method(args.workdir, None if args.workdir else args.config)
    out = tempfile.mkdtemp(prefix="bench_app_")
    for side in (int(s) for s in args.sizes.split(",")):
        def respond(photo, value, side=side):
            return app.respond(method, photo, "bench", value, None, max_side=max(side, 1024),
                               output_dir=out)
        first = timed(lambda: respond(*photo_and_strokes(side, side, 0)))
        repeated = []
        for i in range(args.repeats):  # other photos of the same bucket: e.g. 500x490 for 512
            photo, value = photo_and_strokes(side - 4 * (i + 1), side - 6 * (i + 1), i + 1)
            repeated.append(timed(lambda: respond(photo, value)))
        bucket = model_inpainter.bucket_side(side, method.inpaint.multiple)
        images = np.random.default_rng(0).random((1, bucket, bucket, 3), np.float32)
        masks = np.ones((1, bucket, bucket, 1), np.float32)
        masks[:, bucket // 4: bucket // 2, bucket // 4: bucket // 2] = 0
        method.inpaint(images, masks)  # compiled already; one more warm-up
        forward = statistics.median(timed(lambda: method.inpaint(images, masks))
                                    for _ in range(args.repeats))
        median = statistics.median(repeated)
        print(json.dumps({"side": side, "padded": bucket, "first_s": round(first, 3),
                          "repeated_s": round(median, 3), "forward_s": round(forward, 4),
                          "repeated_over_forward": round(median / forward, 2)}), flush=True)


if __name__ == "__main__":
    main()
