"""How long a config's train step waits for its input pipeline: train.py's loop, timed.

    python benchmarks/bench_data_wait.py --config configs/places2.py --steps 300
    python benchmarks/bench_data_wait.py --config configs/places2.py --set data.batch_size=48

The config's network, loss, optimizer and training pipeline (`config.data`, `config.masks`,
with its `workers` / `worker_processes`) run as train.py runs them: the step is dispatched
asynchronously and the next batch is drawn while the accelerator computes. What train.py also
does is left out: checkpoints, TensorBoard, the held-out evaluation; VGG16's weights are random
(the same cost), so no weights file and no TensorFlow are needed. With `--generated N` (default
256) the images are N generated JPEGs of 1.5 × 1.25 the crop side read as a `folder` source, 8
of them held out as a folder source needs (Places2's TFDS set cannot be prepared offline);
`--generated 0` keeps `config.data`'s source. Prints one JSON line: images/s, and
`data_wait_fraction` (the share of the timed steps' wall-clock time spent in `next(pipeline)`,
as train.py logs it) over the steps after `--warmup`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's pconv_jax, also in worker processes


def measure(config, steps: int, warmup: int) -> dict:
    import jax

    from pconv_jax.data import pipeline as data_pipeline
    from pconv_jax.network import vgg16
    from pconv_jax.training import logs, mesh
    from pconv_jax.training.step import create_train_state, make_steps, network_graphdef

    data_mesh = mesh.make_data_mesh()
    train_steps = make_steps(config, network_graphdef(config))
    _, state = create_train_state(config, train_steps.tx, data_mesh)
    vgg = mesh.replicate(vgg16.random_vgg16(jax.random.key(0)), data_mesh)
    pipeline = data_pipeline.create_train_pipeline(config, seed=0)
    setting, count = data_pipeline.parallelism(config.data)
    try:
        with jax.set_mesh(data_mesh):
            for step in range(warmup + steps):
                if step == warmup:  # compiled, workers started: the timed window begins
                    jax.block_until_ready(state)
                    data_wait = logs.DataWait(setting, count)
                    start = time.perf_counter()
                local = data_wait.next(pipeline) if step >= warmup else next(pipeline)
                state, metrics = train_steps.train(state, mesh.global_batch(local, data_mesh),
                                                   vgg)
            jax.block_until_ready(metrics)
            elapsed = time.perf_counter() - start
            fraction = data_wait.measure(warmup + steps)["data_wait_fraction"]
    finally:
        pipeline.close()
    return {"images_per_s": steps * config.data.batch_size / elapsed,
            "data_wait_fraction": round(fraction, 4), "steps": steps,
            "batch": config.data.batch_size, "size": config.data.image_size,
            "dtype": config.model.dtype, "source": config.data.name, setting: count,
            "cpu_cores": len(os.sched_getaffinity(0)), "devices": jax.device_count(),
            "device": jax.devices()[0].device_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "places2.py"),
                        help="config file[:arg] (default: configs/places2.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.batch_size=48 (repeatable)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20, help="steps before the timed ones")
    parser.add_argument("--generated", type=int, default=256,
                        help="read this many generated JPEGs as a folder (0: config's source)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    from bench_data import write_jpegs

    from pconv_jax import config as config_lib
    with tempfile.TemporaryDirectory() as folder:
        overrides = list(args.set)
        if args.generated:
            overrides = ["data.name=folder", f"data.folder={folder}", "data.heldout_count=8",
                         *overrides]
        config = config_lib.load_config(args.config, overrides)
        if args.generated:
            write_jpegs(folder, args.generated, config.data.image_size)
        print(json.dumps(measure(config, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
