"""Throughput of the input pipelines and of the mask generator.

Prints one JSON line per measurement, e.g.
  {"bench": "pipeline", "source": "demo", "image_size": 256, "batch_size": 16, "images_per_s": ...}
  {"bench": "masks", "size": 256, "masks_per_s": ...}

Usage: python benchmarks/bench_data.py [--size 256] [--batch 16] [--batches 20]
"""
import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import cv2  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from pconv_jax.data import images  # noqa: E402
from pconv_jax import config as config_lib  # noqa: E402
from pconv_jax.data import pipeline as data  # noqa: E402
from pconv_jax.data.masks import generate_mask  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.py")


def _config(name: str, size: int, batch: int, **overrides) -> ml_collections.ConfigDict:
    settings = dict(name=name, image_size=size, batch_size=batch, **overrides)
    return config_lib.load_config(DEFAULT_CONFIG, [f"data.{k}={v}" for k, v in settings.items()])


def _pipeline_rate(config: ml_collections.ConfigDict, batches: int) -> float:
    pipeline = data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)
    for _ in range(3):  # warm-up: graph building, first decodes
        next(pipeline)
    start = time.perf_counter()
    for _ in range(batches):
        next(pipeline)
    return batches * config.data.batch_size / (time.perf_counter() - start)


def _write_folder(folder: str, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), np.uint8)  # smooth photo-like content
        image = cv2.resize(small, (size * 3 // 2, size * 5 // 4), interpolation=cv2.INTER_CUBIC)
        images.write_image(os.path.join(folder, f"{i:04d}.jpg"), image)


def _mask_rate(size: int, count: int) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(count):
        generate_mask(rng, size)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))

    def report(**fields):
        print(json.dumps({**fields, "cpu_cores": cores}), flush=True)

    for size in (256, 512):
        report(bench="masks", size=size, masks_per_s=round(_mask_rate(size, 200), 1),
               threads=1)

    common = dict(image_size=args.size, batch_size=args.batch)
    rate = _pipeline_rate(_config("demo", args.size, args.batch), args.batches)
    report(bench="pipeline", source="demo", images_per_s=round(rate, 1), **common)

    with tempfile.TemporaryDirectory() as folder:
        _write_folder(folder, 64, args.size)
        rate = _pipeline_rate(_config("folder", args.size, args.batch, folder=folder,
                                      heldout_count=4), args.batches)
        report(bench="pipeline", source="folder (64 generated JPEGs)",
               images_per_s=round(rate, 1), **common)

    with tfds.testing.mock_data(num_examples=256):
        rate = _pipeline_rate(_config("places365_small", args.size, args.batch), args.batches)
    report(bench="pipeline", source="places365_small (tfds mock_data)",
           images_per_s=round(rate, 1), **common)


if __name__ == "__main__":
    main()
