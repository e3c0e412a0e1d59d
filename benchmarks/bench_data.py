"""Throughput of the input pipelines and of the mask generator, and the cores a GPU needs.

For each source (demo, folder of generated JPEGs, TFDS on generated ArrayRecord files) and
size, the pipeline runs in a child process pinned to one core, then to all cores, alternately
(`--rounds` times, best kept), so that the two figures of a line share the machine's load.
Threads (`config.data.workers`) do the per-example work; `--processes` also measures the
pipeline with `config.data.worker_processes` = all cores (grain's `mp_prefetch`; the parent only
collects the batches, as train.py's does while the accelerator computes). One JSON line per figure:

  {"bench": "masks", "size": 256, "masks_per_s": ...}
  {"bench": "pipeline", "source": "folder", "size": 256, "images_per_s_1_core": ...,
   "images_per_s_all_cores": ..., "scaling": ..., "rss_mb": ..., "cores_per_gpu": ...,
   "images_per_s_processes": ..., "scaling_processes": ..., "rss_mb_processes": ...}

`cores_per_gpu` is the cores the pipeline needs to feed one GPU at `--target_images_per_s`
(default 2000 at 256², the estimate for an H100/H200 at 40 % of its bfloat16 rate; scaled by
(256 / size)² for other sizes).

Usage: python benchmarks/bench_data.py [--sizes 256 512] [--batch 16] [--seconds 5]
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's pconv_jax, also in the child processes

TFDS_NAME = {256: "places365_small", 512: "celeb_a_hq/512"}  # generated sets of these shapes


def _config(source: str, size: int, batch: int, workers: int, data_dir: str):
    from pconv_jax import config as config_lib
    config = config_lib.default_config()
    config.data.update(image_size=size, batch_size=batch, workers=workers, heldout_count=4)
    if source == "folder":
        config.data.update(name="folder", folder=os.path.join(data_dir, f"folder_{size}"))
    elif source == "tfds":
        config.data.update(name=TFDS_NAME[size], tfds_data_dir=os.path.join(data_dir, "tfds"),
                           download=False)
    else:
        config.data.name = "demo"
    return config


def _batches(config):
    """The training pipeline of `config` (threads or worker processes, as it says)."""
    from pconv_jax.data import pipeline as data
    return data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)


def _resident_mb() -> float:
    """Resident memory of this process and its children (worker processes), MB."""
    import psutil
    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20


def child(args) -> None:
    """Measures one pipeline on the cores this process may use; prints one JSON line."""
    cores = len(os.sched_getaffinity(0))
    config = _config(args.source, args.size, args.batch, cores, args.data_dir)
    if args.processes:  # what train.py does with worker_processes = the cores
        config.data.worker_processes = cores
    batches = _batches(config)
    for _ in range(3):  # warm-up: worker start, first decodes
        next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        next(batches)
        count += args.batch
    rate = count / (time.perf_counter() - start)
    print(json.dumps({"images_per_s": rate, "rss_mb": _resident_mb()}), flush=True)
    batches.close()


def _run_child(args, source: str, size: int, cpus: set[int], processes: bool) -> dict:
    command = [sys.executable, __file__, "--child", "--source", source, "--size", str(size),
               "--batch", str(args.batch), "--seconds", str(args.seconds),
               "--data_dir", args.data_dir] + (["--processes"] if processes else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        raise RuntimeError(f"benchmark child failed ({source}, {size}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def _mask_rate(size: int, seconds: float) -> float:
    from pconv_jax.data.masks import generate_mask
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        generate_mask((0, count), size)
        count += 1
    return count / (time.perf_counter() - start)


def _prepare(data_dir: str, sizes: list[int], sources: list[str]) -> None:
    """Folders of 64 generated JPEGs (1.5 x 1.25 the crop size) and generated TFDS sets."""
    import cv2
    import numpy as np

    from pconv_jax.data import images
    rng = np.random.default_rng(0)
    for size in sizes:
        folder = os.path.join(data_dir, f"folder_{size}")
        os.makedirs(folder, exist_ok=True)
        for i in range(64):
            small = rng.integers(0, 255, (12, 16, 3), np.uint8)  # smooth photo-like content
            image = cv2.resize(small, (size * 3 // 2, size * 5 // 4),
                               interpolation=cv2.INTER_CUBIC)
            images.write_image(os.path.join(folder, f"{i:04d}.jpg"), image)
    if "tfds" in sources:
        from pconv_jax.data.synthetic_tfds import write_synthetic_tfds
        for size in sizes:
            write_synthetic_tfds(TFDS_NAME[size], os.path.join(data_dir, "tfds"), train=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--sources", nargs="+", default=["demo", "folder", "tfds"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations 1 core / all cores")
    parser.add_argument("--target_images_per_s", type=float, default=2000.0,
                        help="images/s one GPU consumes at 256² (scaled by (256/size)²)")
    parser.add_argument("--processes", action="store_true",
                        help="also measure grain worker processes on all cores")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    cpus = os.sched_getaffinity(0)
    one, cores = {min(cpus)}, len(cpus)

    def report(**fields):
        print(json.dumps({**fields, "cpu_cores": cores}), flush=True)

    for size in args.sizes:
        report(bench="masks", size=size, masks_per_s=round(_mask_rate(size, args.seconds), 1),
               threads=1)

    with tempfile.TemporaryDirectory() as data_dir:
        args.data_dir = data_dir
        with contextlib.redirect_stdout(sys.stderr):  # TFDS' progress: stdout stays JSON
            _prepare(data_dir, args.sizes, args.sources)
        for size in args.sizes:
            target = args.target_images_per_s * (256 / size) ** 2
            for source in args.sources:
                runs = {"1": [], "all": [], "processes": []}
                for _ in range(args.rounds):  # interleaved: both see the same load
                    runs["1"].append(_run_child(args, source, size, one, False))
                    runs["all"].append(_run_child(args, source, size, cpus, False))
                    if args.processes:
                        runs["processes"].append(_run_child(args, source, size, cpus, True))
                best = {k: max(v, key=lambda r: r["images_per_s"]) for k, v in runs.items() if v}
                one_rate, all_rate = best["1"]["images_per_s"], best["all"]["images_per_s"]
                fields = dict(
                    bench="pipeline", source=source, size=size, batch_size=args.batch,
                    images_per_s_1_core=round(one_rate, 1),
                    images_per_s_all_cores=round(all_rate, 1),
                    scaling=round(all_rate / one_rate, 2),
                    rss_mb=round(best["all"]["rss_mb"]),
                    target_images_per_s=round(target),
                    cores_per_gpu=round(target / (all_rate / cores), 1))
                if "processes" in best:
                    fields.update(
                        images_per_s_processes=round(best["processes"]["images_per_s"], 1),
                        scaling_processes=round(best["processes"]["images_per_s"] / one_rate, 2),
                        rss_mb_processes=round(best["processes"]["rss_mb"]))
                report(**fields)


if __name__ == "__main__":
    main()
