"""Throughput of the full train step (forward, loss with the VGG terms, backward, Adam).

    python benchmarks/bench_train.py                   # 256x256, depth 7, batch 4, PConv and Conv
    python benchmarks/bench_train.py --dtype bfloat16 --variants pconv
    python benchmarks/bench_train.py --config configs/celeba_hq.py:512 --set data.batch_size=2

The network, loss and optimizer come from a config file (default `pconv_jax/configs/default.py`: the
paper's 256x256 network) plus overrides; `--size`, `--depth`, `--batch`, `--base_width` and
`--dtype` are shortcuts for the overrides of `data.image_size`, `model.depth`, `data.batch_size`,
`model.base_width` and `model.dtype`; `--loss_dtype` and `--loss_remat` set `config.loss.dtype` and
`config.loss.remat` on the config itself, so they also work with a version whose config lacks
them (then they change nothing: `loss_options_in_config` says which). Prints one JSON object per
variant: images/s and s/step (median of the timed steps), the compile time, and `peak_gb`, the
device's peak bytes in use so far in this process (`memory_stats()`; null where the device does
not report it, e.g. CPU). VGG16 weights are random (the cost is the same as with the real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from pconv_jax import config as config_lib
from pconv_jax.network import vgg16
from pconv_jax.training import mesh
from pconv_jax.training.step import create_train_state, make_steps, network_graphdef

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORTCUTS = {"size": "data.image_size", "depth": "model.depth", "batch": "data.batch_size",
             "base_width": "model.base_width", "dtype": "model.dtype"}


def bench(partial: bool, args) -> dict:
    # A config file and overrides, as train.py reads them (no data pipeline: no TensorFlow).
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in SHORTCUTS.items()
                 if getattr(args, flag) is not None] + args.set + [f"model.partial={partial}"]
    config = config_lib.load_config(args.config, overrides)
    with config.unlocked():
        if args.loss_dtype:
            config.loss.dtype = args.loss_dtype
        if args.loss_remat:
            config.loss.remat = args.loss_remat == "on"
    config_lib.validate(config, jax.device_count())
    size, batch_size = config.data.image_size, config.data.batch_size
    data_mesh = mesh.make_data_mesh()
    steps = make_steps(config, network_graphdef(config))
    _, state = create_train_state(config, steps.tx, data_mesh)
    step = steps.train
    vgg_params = mesh.replicate(vgg16.random_vgg16(jax.random.key(0)), data_mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((batch_size, size, size, 3), np.float32),
             "mask": (rng.random((batch_size, size, size, 1)) > 0.3).astype(np.float32)}
    batch = mesh.global_batch(batch, data_mesh)
    times = []
    with jax.set_mesh(data_mesh):
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
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    loss_keys = config_lib.default_config().loss
    return {"variant": "pconv" if partial else "conv", "images_per_sec": batch_size / seconds,
            "sec_per_step": seconds, "first_step_sec": compile_s, "size": size,
            "depth": config.model.depth, "batch": batch_size, "dtype": config.model.dtype,
            "remat": config.model.remat, "loss_dtype": config.loss.get("dtype", "float32"),
            "loss_remat": config.loss.get("remat", False),
            "loss_options_in_config": "dtype" in loss_keys and "remat" in loss_keys,
            "peak_gb": None if peak is None else peak / 1e9,
            "steps": args.steps, "config": args.config,
            "loss": float(metrics["loss"]), "devices": jax.device_count(),
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "cpu": platform.processor() or platform.machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG_FILE,
                        help="config file[:arg] (default: pconv_jax/configs/default.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.remat=True (repeatable)")
    parser.add_argument("--size", type=int, help="data.image_size")
    parser.add_argument("--depth", type=int, help="model.depth")
    parser.add_argument("--batch", type=int, default=4, help="data.batch_size (default 4)")
    parser.add_argument("--base_width", type=int, help="model.base_width")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="model.dtype")
    parser.add_argument("--loss_dtype", choices=("float32", "bfloat16"), help="config.loss.dtype")
    parser.add_argument("--loss_remat", choices=("on", "off"), help="config.loss.remat")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--variants", default="pconv,conv", help="pconv, conv or both")
    args = parser.parse_args()
    for variant in args.variants.split(","):
        print(json.dumps(bench(variant == "pconv", args)), flush=True)


if __name__ == "__main__":
    main()
