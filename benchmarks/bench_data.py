"""Throughput of the input pipelines and of the mask generator, and the cores a GPU needs.

For each source (demo, folder of generated JPEGs, TFDS on generated ArrayRecord files) and
size, the pipeline runs in a child process pinned to one core (one thread); on all cores with
threads (`config.data.workers`); with `--processes`, on all cores with
`config.data.worker_processes` = all cores (`data/shared_batches.py`; the parent only collects the
batches, as train.py's does while the accelerator computes); and as independent one-core
children, one pinned to each core, all at once ("independent": what the machine gives this
work on all cores with nothing shared, the ceiling of any pipeline; a shared virtual machine's
cores also run other tenants' work). The runs alternate `--rounds` times, so that the figures
of a round share the machine's load; each figure is the median over rounds, each scaling (all
cores / one core) the median of the rounds' ratios. `cores_busy` is the CPU time of the run's
process tree per second. One JSON line per figure:

  {"bench": "masks", "size": 256, "masks_per_s": ...}
  {"bench": "pipeline", "source": "folder", "size": 256, "images_per_s_1_core": ...,
   "images_per_s_all_cores": ..., "scaling": ..., "images_per_s_processes": ...,
   "scaling_processes": ..., "images_per_s_independent": ..., "scaling_independent": ...,
   "scaling_processes_rounds": [...], "rss_mb_processes": ..., "processes_of_independent": ...,
   "cores_per_gpu": ..., ...}

`--contention busy` adds, in the same rounds, runs with a busy process pinned to the last core
that spins `--busy_share` (default 0.8) of every 10 ms: another process using most of a core, as
a training process's dispatch and collector threads, TensorBoard or a checkpoint writer do on a
GPU host. Its lines carry "contention": "busy". `--baseline DIR` also runs the worker-process
pipeline of the checkout in DIR (e.g. an older commit unpacked with `git archive`) in the same
rounds ("processes_baseline"); `--modes` picks the runs (default: all).

With worker processes of this checkout, `workers_waiting_processes` is the share of each
worker's time spent waiting for a free slot (the parent behind) and `collector_waiting_processes`
the share of the parent's collector thread's time spent waiting for the next batch (the
workers behind).

`cores_per_gpu` is the cores the pipeline needs to feed one GPU at `--target_images_per_s`
(default 2000 at 256², the estimate for an H100/H200 at 40 % of its bfloat16 rate; scaled by
(256 / size)² for other sizes), from the faster of threads and processes on all cores.

Usage: python benchmarks/bench_data.py [--sizes 256 512] [--batch 16] [--seconds 5] [--processes]
  [--contention none busy] [--baseline DIR] [--modes 1_core independent processes]
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
# This checkout's pconv_jax, or the --baseline checkout's, also in the child processes and in
# their worker processes (which import this script again).
CHECKOUT = "BENCH_DATA_CHECKOUT"
sys.path.insert(0, os.environ.get(CHECKOUT, REPO))

MODES = ("1_core", "all_cores", "independent")  # (--processes and --baseline add their own)
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
    workers = getattr(batches, "_workers", None)  # worker processes of this checkout's kind
    waited = dict(workers.waited) if workers else {}
    cpu_start, count, start = _cpu_seconds(), 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        next(batches)
        count += args.batch
    elapsed, cpu_end = time.perf_counter() - start, _cpu_seconds()
    busy = sum(cpu_end[pid] - cpu_start.get(pid, 0.0) for pid in cpu_end) / elapsed
    result = {"images_per_s": count / elapsed, "cores_busy": busy, "rss_mb": _resident_mb()}
    if waited:  # where the time went: the share of the timed seconds spent waiting
        result["workers_waiting"] = (workers.waited["workers"] - waited["workers"]) / (
            elapsed * config.data.worker_processes)  # for a free slot, per worker
        result["collector_waiting"] = (workers.waited["parent"] - waited["parent"]) / elapsed
    print(json.dumps(result), flush=True)
    batches.close()


def busy(share: float) -> None:
    """Spins `share` of every 10 ms and sleeps the rest, until killed."""
    while True:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.01 * share:
            pass
        time.sleep(0.01 * (1 - share))


@contextlib.contextmanager
def _contention(kind: str, share: float, core: int):
    """While open: nothing ('none'), or a `busy` process pinned to `core` ('busy')."""
    if kind == "none":
        yield
        return
    process = subprocess.Popen([sys.executable, __file__, "--busy", str(share)],
                               preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        yield
    finally:
        process.kill()
        process.wait()


def _run_children(args, source: str, size: int, cpu_sets: list[set[int]], processes: bool,
                  repo: str | None = None) -> dict:
    """One child per set of cores, all at once: their images/s, CPU use and memory, summed."""
    command = [sys.executable, __file__, "--child", "--source", source, "--size", str(size),
               "--batch", str(args.batch), "--seconds", str(args.seconds),
               "--data_dir", args.data_dir] + (["--processes"] if processes else [])
    env = {**os.environ, CHECKOUT: repo or REPO}
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env,
                                 preexec_fn=lambda cpus=cpus: os.sched_setaffinity(0, cpus))
                for cpus in cpu_sets]
    results = []
    for child in children:
        stdout, stderr = child.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if child.returncode or not lines:
            raise RuntimeError(f"benchmark child failed ({source}, {size}):\n{stderr[-3000:]}")
        results.append(json.loads(lines[-1]))
    return {key: sum(result[key] for result in results) for key in results[0]}


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
        from pconv_jax.testing.synthetic_tfds import write_synthetic_tfds
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
    parser.add_argument("--contention", nargs="+", default=["none"], choices=["none", "busy"],
                        help="none: the machine as it is; busy: plus a busy process pinned "
                             "to the last core (each in every round)")
    parser.add_argument("--busy_share", type=float, default=0.8,
                        help="share of its core the busy process uses")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run the worker-process pipeline of the checkout in DIR")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="runs to make (1_core is always made: the scalings' reference)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--busy", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.busy is not None:
        return busy(args.busy)
    if not 0 < args.busy_share < 1:
        parser.error("--busy_share must be between 0 and 1")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "pconv_jax")):
        parser.error(f"--baseline {args.baseline}: not a checkout (no pconv_jax folder in it)")

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
        # mode -> (the cores of each child run at once, worker processes?, checkout)
        modes = {"1_core": ([one], False, None), "all_cores": ([cpus], False, None),
                 "independent": ([{cpu} for cpu in sorted(cpus)], False, None)}
        if args.processes:
            modes["processes"] = ([cpus], True, None)
        if args.baseline:
            modes["processes_baseline"] = ([cpus], True, os.path.abspath(args.baseline))
        modes = {mode: how for mode, how in modes.items()
                 if mode == "1_core" or mode.startswith("processes") or mode in args.modes}
        for size in args.sizes:
            target = args.target_images_per_s * (256 / size) ** 2
            for source in args.sources:
                runs = {(kind, mode): [] for kind in args.contention for mode in modes}
                for _ in range(args.rounds):  # interleaved: a round's runs share the load
                    for kind in args.contention:
                        with _contention(kind, args.busy_share, max(cpus)):
                            for mode, (cpu_sets, processes, repo) in modes.items():
                                runs[kind, mode].append(_run_children(
                                    args, source, size, cpu_sets, processes, repo))
                for kind in args.contention:
                    report(**_pipeline_fields(
                        {mode: runs[kind, mode] for mode in modes}, cores, target,
                        bench="pipeline", source=source, size=size, batch_size=args.batch,
                        target_images_per_s=round(target),
                        **({} if kind == "none" else
                           {"contention": kind, "busy_share": args.busy_share})))


def _pipeline_fields(runs: dict[str, list[dict]], cores: int, target: float, **fields) -> dict:
    """The figures of one line from the runs of each mode (one per round)."""
    best_rate = 0.0
    for mode, mode_runs in runs.items():
        rate = statistics.median(r["images_per_s"] for r in mode_runs)
        suffix = "" if mode == "all_cores" else "_" + mode
        fields[f"images_per_s_{mode}"] = round(rate, 1)
        fields[f"rss_mb{suffix}"] = round(max(r["rss_mb"] for r in mode_runs))
        fields[f"cores_busy{suffix}"] = round(
            statistics.median(r["cores_busy"] for r in mode_runs), 2)
        for wait in ("workers_waiting", "collector_waiting"):  # (worker processes only)
            if wait in mode_runs[0]:
                fields[f"{wait}{suffix}"] = round(
                    statistics.median(r[wait] for r in mode_runs), 3)
        if mode == "1_core":
            continue
        ratios = [r["images_per_s"] / o["images_per_s"]
                  for r, o in zip(mode_runs, runs["1_core"])]
        fields[f"scaling{suffix}"] = round(statistics.median(ratios), 2)
        fields[f"scaling{suffix}_rounds"] = [round(r, 2) for r in ratios]
        if mode in ("all_cores", "processes"):  # a pipeline that feeds one training process
            best_rate = max(best_rate, rate)
    for mode in ("processes", "processes_baseline"):  # how close to the machine's ceiling
        if mode in runs and "independent" in runs:
            ratios = [p["images_per_s"] / i["images_per_s"]
                      for p, i in zip(runs[mode], runs["independent"])]
            fields[f"{mode}_of_independent"] = round(statistics.median(ratios), 2)
            fields[f"{mode}_of_independent_rounds"] = [round(r, 2) for r in ratios]
    if best_rate:
        fields["cores_per_gpu"] = round(target / (best_rate / cores), 1)
    return fields

if __name__ == "__main__":
    main()
