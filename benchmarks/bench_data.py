"""Throughput of the input pipelines and of the mask generator, and the cores a GPU needs.

For each source (demo, folder of generated JPEGs, TFDS on generated ArrayRecord files) and
size, the pipeline runs in a child process pinned to one core (one thread), then on all cores
with threads (`config.data.workers`), then, with `--processes`, with `config.data.worker_processes`
= all cores (grain's `mp_prefetch`; the parent only collects the batches, as train.py's does
while the accelerator computes). The three alternate `--rounds` times, so that the figures of a
round share the machine's load; each figure is the median over rounds, each scaling the median
of the rounds' ratios. A shared virtual machine's cores also run other tenants' work: the
`cpu_ceiling` line measures, in the same way, what the machine gives a pure CPU-bound Python
loop from one process to one per core, the most any pipeline could scale there. Each run also
reports the CPU time of its process tree per second (`cores_busy`), so that `efficiency`
(images per CPU-second, all cores / one core) shows how much of the work parallel execution
adds, whatever the machine's load. One JSON line per figure:

  {"bench": "masks", "size": 256, "masks_per_s": ...}
  {"bench": "cpu_ceiling", "scaling": ..., "scaling_rounds": [...]}
  {"bench": "pipeline", "source": "folder", "size": 256, "images_per_s_1_core": ...,
   "images_per_s_all_cores": ..., "scaling": ..., "efficiency": ..., "rss_mb": ...,
   "images_per_s_processes": ..., "scaling_processes": ..., "efficiency_processes": ...,
   "scaling_processes_rounds": [...], "rss_mb_processes": ..., "cores_per_gpu": ...}

`cores_per_gpu` is the cores the pipeline needs to feed one GPU at `--target_images_per_s`
(default 2000 at 256², the estimate for an H100/H200 at 40 % of its bfloat16 rate; scaled by
(256 / size)² for other sizes), from the faster of threads and processes on all cores.

Usage: python benchmarks/bench_data.py [--sizes 256 512] [--batch 16] [--seconds 5] [--processes]
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

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


def _process_tree():
    import psutil
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _resident_mb() -> float:
    """Resident memory of this process and its children (worker processes), MB."""
    return sum(p.memory_info().rss for p in _process_tree()) / 2**20


def _cpu_seconds() -> dict[int, float]:
    """User + system CPU seconds of this process and of each child, by pid."""
    return {p.pid: p.cpu_times().user + p.cpu_times().system for p in _process_tree()}


def child(args) -> None:
    """Measures one pipeline on the cores this process may use; prints one JSON line."""
    cores = len(os.sched_getaffinity(0))
    config = _config(args.source, args.size, args.batch, cores, args.data_dir)
    if args.processes:  # what train.py does with worker_processes = the cores
        config.data.worker_processes = cores
    batches = _batches(config)
    for _ in range(3):  # warm-up: worker start, first decodes
        next(batches)
    cpu_start, count, start = _cpu_seconds(), 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        next(batches)
        count += args.batch
    elapsed, cpu_end = time.perf_counter() - start, _cpu_seconds()
    busy = sum(cpu_end[pid] - cpu_start.get(pid, 0.0) for pid in cpu_end) / elapsed
    print(json.dumps({"images_per_s": count / elapsed, "cores_busy": busy,
                      "rss_mb": _resident_mb()}), flush=True)
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


def spin(seconds: float) -> None:
    """A pure CPU-bound Python loop for `seconds`; prints its iterations per second."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10_000):
            count += 1
    print(count / (time.perf_counter() - start), flush=True)


def _ceiling_round(cpus: set[int], seconds: float) -> float:
    """Loop iterations per second of one `spin` per core in `cpus`, all at once."""
    children = [subprocess.Popen([sys.executable, __file__, "--spin", "--seconds", str(seconds)],
                                 stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
                for cpu in sorted(cpus)]
    return sum(float(child.communicate()[0]) for child in children)


def _mask_rate(size: int, seconds: float) -> float:
    from pconv_jax.data.masks import generate_mask
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        generate_mask((0, count), size)
        count += 1
    return count / (time.perf_counter() - start)


def write_jpegs(folder: str, count: int, size: int) -> None:
    """`count` JPEGs of smooth photo-like content, 1.5 × 1.25 the crop side `size`."""
    import cv2
    import numpy as np

    from pconv_jax.data import images
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), np.uint8)
        image = cv2.resize(small, (size * 3 // 2, size * 5 // 4), interpolation=cv2.INTER_CUBIC)
        images.write_image(os.path.join(folder, f"{i:05d}.jpg"), image)


def _prepare(data_dir: str, sizes: list[int], sources: list[str]) -> None:
    """Folders of 64 generated JPEGs and generated TFDS sets (128 examples)."""
    for size in sizes:
        write_jpegs(os.path.join(data_dir, f"folder_{size}"), 64, size)
    if "tfds" in sources:
        from pconv_jax.data.synthetic_tfds import write_synthetic_tfds
        for size in sizes:
            write_synthetic_tfds(TFDS_NAME[size], os.path.join(data_dir, "tfds"), train=128)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # (inherited by the children) CPU only
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--sources", nargs="+", default=["demo", "folder", "tfds"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of the runs (medians are reported)")
    parser.add_argument("--target_images_per_s", type=float, default=2000.0,
                        help="images/s one GPU consumes at 256² (scaled by (256/size)²)")
    parser.add_argument("--processes", action="store_true",
                        help="also measure grain worker processes on all cores")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spin:
        return spin(args.seconds)
    if args.child:
        return child(args)

    cpus = os.sched_getaffinity(0)
    one, cores = {min(cpus)}, len(cpus)

    def report(**fields):
        print(json.dumps({**fields, "cpu_cores": cores}), flush=True)

    for size in args.sizes:
        report(bench="masks", size=size, masks_per_s=round(_mask_rate(size, args.seconds), 1),
               threads=1)

    ceiling = [_ceiling_round(cpus, args.seconds) / _ceiling_round(one, args.seconds)
               for _ in range(args.rounds)]
    report(bench="cpu_ceiling", scaling=round(statistics.median(ceiling), 2),
           scaling_rounds=[round(r, 2) for r in ceiling])

    with tempfile.TemporaryDirectory() as data_dir:
        args.data_dir = data_dir
        with contextlib.redirect_stdout(sys.stderr):  # TFDS' progress: stdout stays JSON
            _prepare(data_dir, args.sizes, args.sources)
        modes = {"1_core": (one, False), "all_cores": (cpus, False)}
        if args.processes:
            modes["processes"] = (cpus, True)
        for size in args.sizes:
            target = args.target_images_per_s * (256 / size) ** 2
            for source in args.sources:
                runs = {mode: [] for mode in modes}
                for _ in range(args.rounds):  # interleaved: a round's runs share the load
                    for mode, (mode_cpus, processes) in modes.items():
                        runs[mode].append(_run_child(args, source, size, mode_cpus, processes))
                fields = dict(bench="pipeline", source=source, size=size, batch_size=args.batch,
                              target_images_per_s=round(target))
                best_rate = 0.0
                for mode, mode_runs in runs.items():
                    rate = statistics.median(r["images_per_s"] for r in mode_runs)
                    suffix = "" if mode == "all_cores" else "_" + mode
                    fields[f"images_per_s_{mode}"] = round(rate, 1)
                    fields[f"rss_mb{suffix}"] = round(max(r["rss_mb"] for r in mode_runs))
                    fields[f"cores_busy{suffix}"] = round(
                        statistics.median(r["cores_busy"] for r in mode_runs), 2)
                    if mode == "1_core":
                        continue
                    best_rate = max(best_rate, rate)
                    ratios = [r["images_per_s"] / o["images_per_s"]
                              for r, o in zip(mode_runs, runs["1_core"])]
                    fields[f"scaling{suffix}"] = round(statistics.median(ratios), 2)
                    fields[f"scaling{suffix}_rounds"] = [round(r, 2) for r in ratios]
                    per_cpu_s = [(r["images_per_s"] / r["cores_busy"])
                                 / (o["images_per_s"] / o["cores_busy"])
                                 for r, o in zip(mode_runs, runs["1_core"])]
                    fields[f"efficiency{suffix}"] = round(statistics.median(per_cpu_s), 2)
                fields["cores_per_gpu"] = round(target / (best_rate / cores), 1)
                report(**fields)


if __name__ == "__main__":
    main()
