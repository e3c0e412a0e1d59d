"""Throughput of the full train step (forward, loss with the VGG terms, backward, Adam).

    python benchmarks/bench_train.py                   # 256x256, depth 7, batch 4, PConv and Conv
    python benchmarks/bench_train.py --dtype bfloat16 --variants pconv

Prints one JSON object per variant: images/s and s/step (median of the timed steps), plus the
compile time. VGG16 weights are random (the cost is the same as with the real ones).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import ml_collections
import numpy as np
import optax

from pconv_jax import config as config_lib
from pconv_jax.loss import losses
from pconv_jax.network import unet as model
from pconv_jax.training import mesh as parallel
from pconv_jax.network import vgg16 as vgg
from pconv_jax.training.step import create_train_state, make_train_step


def bench(partial: bool, args) -> dict:
    # The sections a train step needs (no data pipeline: TensorFlow need not be installed).
    config = ml_collections.ConfigDict(dict(seed=0, model=model.default_config(),
                                            loss=losses.default_config(),
                                            train=config_lib.train_config()))
    config.model.partial = partial
    config.model.depth, config.model.dtype = args.depth, args.dtype
    config.model.base_width = args.base_width
    mesh = parallel.make_data_mesh()
    tx = optax.adam(2e-4)
    graphdef, state = create_train_state(config, tx, mesh)
    step = make_train_step(graphdef, tx, dict(config.loss.weights), False)
    vgg_params = parallel.replicate(vgg.random_vgg16(jax.random.key(0)), mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((args.batch, args.size, args.size, 3), np.float32),
             "mask": (rng.random((args.batch, args.size, args.size, 1)) > 0.3).astype(np.float32)}
    batch = parallel.global_batch(batch, mesh)
    times = []
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        state, metrics = step(state, batch, vgg_params)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        for _ in range(args.steps):
            start = time.perf_counter()
            state, metrics = step(state, batch, vgg_params)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"variant": "pconv" if partial else "conv", "images_per_sec": args.batch / seconds,
            "sec_per_step": seconds, "first_step_sec": compile_s, "size": args.size,
            "depth": args.depth, "batch": args.batch, "dtype": args.dtype, "steps": args.steps,
            "loss": float(metrics["loss"]), "devices": jax.device_count(),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "cpu": platform.processor() or platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--base_width", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--variants", default="pconv,conv", help="pconv, conv or both")
    args = parser.parse_args()
    for variant in args.variants.split(","):
        print(json.dumps(bench(variant == "pconv", args)), flush=True)


if __name__ == "__main__":
    main()
