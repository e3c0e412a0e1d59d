"""Data-parallel scaling projected from the compiled train step (compile only, nothing runs).

The train step is compiled for N simulated CPU devices (batch sharded on 'data', parameters
replicated, the paper's loss with VGG16 terms) and read per device:

- FLOPs (`compiled.cost_analysis()`), the compute term unless `--measured_images_per_s`
  (one GPU's measured train-step throughput, e.g. from gpu_suite.sh) replaces it;
- memory (`compiled.memory_analysis()`), compiled with XLA's memory-oriented CPU scheduler:
  CPU analysis, not GPU (other fusions, no cuDNN workspaces, no allocator);
- the all-reduces of the optimized HLO: the gradient groups (the largest all-reduces, which
  together carry the parameters' bytes) and the small serialised ones (BatchNorm statistics
  in the forward pass and their gradients in the backward pass), counted, not assumed.

Then a step on 8, 64 and 512 GPUs (hosts of 8, NVLink inside, one NIC per GPU across hosts) is
projected for each per-GPU NIC rate; `ASSUMPTIONS` (printed under the table) states the model.

    python benchmarks/bench_scaling.py --quick --dtypes float32   # tiny widths: a smoke test
    python benchmarks/bench_scaling.py                  # 256^2 depth 7 and 512^2 depth 8, batch 8
    python benchmarks/bench_scaling.py --sizes 256 --batches 48 --dtypes bfloat16 \
        --measured_images_per_s 900                     # compute calibrated by one GPU's step

Prints a Markdown table, the assumptions, then one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

GPU_COUNTS = (8, 64, 512)
SHAPES = {256: 7, 512: 8}     # image side -> the paper's depth
# H100 / H200 SXM (the same tensor cores, dense): bfloat16, and TF32 for float32 convolutions
# and matmuls (JAX's default precision for them on these GPUs).
PEAK_TFLOPS = {"bfloat16": 989.0, "float32": 494.0}
HOST_GPUS = 8
NVLINK_GB_S = 450.0           # NVLink 4: 900 GB/s bidirectional per GPU = 450 GB/s each way
NVLINK_LATENCY_US = 5.0       # one all-reduce inside a host
HOP_LATENCY_US = 4.0          # per tree level across hosts, up and down: 2 log2(hosts) levels
NIC_EFFICIENCY = 0.92         # 400 Gb/s = 50 GB/s on the wire, 46 GB/s measured per NIC
# XLA's default --xla_gpu_all_reduce_combine_threshold_bytes (kDefaultAllReduceCombineThreshold)
COMBINE_THRESHOLD = 30 * 1024 * 1024 + 7
BACKWARD_SHARE = 2 / 3        # of the compute: the backward pass, the overlap window
MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--sizes", default="256,512", help="image sides: 256 (depth 7), 512 (8)")
    parser.add_argument("--batches", default="8", help="per-GPU batch sizes, e.g. 1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="model.dtype values")
    parser.add_argument("--remat", default="off", choices=("off", "on", "both"))
    parser.add_argument("--loss_dtype", choices=("float32", "bfloat16"),
                        help="config.loss.dtype (set on the config; default: the config's)")
    parser.add_argument("--nic_gbit", default="100,200,400",
                        help="per-GPU NIC line rates in Gb/s: one table row each")
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="model FLOP utilisation for the FLOP-derived compute term")
    parser.add_argument("--measured_images_per_s", type=float,
                        help="one GPU's measured train-step images/s at this size, batch and "
                             "dtype: replaces the FLOP-derived compute term")
    parser.add_argument("--quick", action="store_true",
                        help="tiny widths at 64^2, depth 4, batch 1 (with --dtypes, --remat): "
                             "checks the script works")
    args = parser.parse_args(argv)
    single = ((args.quick or len(args.sizes.split(",")) == len(args.batches.split(",")) == 1)
              and len(args.dtypes.split(",")) == 1 and args.remat != "both")
    if args.measured_images_per_s is not None and not (args.measured_images_per_s > 0 and single):
        parser.error("--measured_images_per_s needs one row (one size, batch, dtype and remat) "
                     "and a positive rate")
    return args


ARGS = parse_args(sys.argv[1:])
os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={ARGS.devices}",
    MEMORY_SCHEDULER_FLAG]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from pconv_jax import config as config_lib  # noqa: E402
from pconv_jax.network.vgg16 import random_vgg16  # noqa: E402
from pconv_jax.testing import collectives  # noqa: E402
from pconv_jax.training import mesh as mesh_lib  # noqa: E402
from pconv_jax.training import step as step_lib  # noqa: E402

ASSUMPTIONS = [
    "Per device, from XLA's CPU program for N simulated devices (they do not depend on N): "
    "FLOPs (`cost_analysis`), all-reduces (optimized HLO), peak memory = arguments + "
    "temporaries + outputs - donated aliases (`memory_analysis`, compiled with "
    f"`{MEMORY_SCHEDULER_FLAG}`, the memory-oriented scheduler). Memory is CPU analysis, not "
    "GPU: other fusions, no cuDNN workspaces, no allocator; gpu_suite.sh reads the device's "
    "peak.",
    "Compute: FLOPs / (peak x MFU) at the dense H100/H200 SXM tensor-core peak, "
    f"{PEAK_TFLOPS['bfloat16']:g} TFLOP/s bfloat16, {PEAK_TFLOPS['float32']:g} TFLOP/s TF32 "
    "(float32), unless calibrated: batch / the measured images/s of one GPU "
    "(`--measured_images_per_s`, assumed the same per image at this batch).",
    f"Hosts of {HOST_GPUS} GPUs. Inside a host NVLink 4 at {NVLINK_GB_S:g} GB/s per GPU and "
    "direction (900 GB/s bidirectional); across hosts one NIC per GPU at "
    f"{NIC_EFFICIENCY:.0%} of its line rate (400 Gb/s = 50 GB/s line, "
    f"{400 / 8 * NIC_EFFICIENCY:.0f} GB/s used, as measured per NIC).",
    "All-reduce of B bytes on n GPUs: ring inside a host, 2(n-1)/n x B / NVLink; across h hosts "
    "hierarchical: NVLink reduce-scatter and all-gather, 2(g-1)/g x B / NVLink (g = "
    f"{HOST_GPUS}), plus a ring over the hosts of each GPU's 1/g share on its own NIC, "
    "2(h-1)/h x B / (g x NIC); the phases are added, not pipelined.",
    f"Latency per all-reduce: {NVLINK_LATENCY_US:g} us inside a host; across h hosts "
    f"{NVLINK_LATENCY_US:g} us + 2 log2(h) x {HOP_LATENCY_US:g} us (a tree's levels up and "
    f"down: {NVLINK_LATENCY_US + 6 * HOP_LATENCY_US:g} us at 8 hosts, "
    f"{NVLINK_LATENCY_US + 12 * HOP_LATENCY_US:g} us at 64; 25-60 us is what small all-reduces "
    "across hosts take).",
    "Gradients: each gradient all-reduce group of the CPU program is split into buckets of at "
    f"most XLA's GPU combine threshold ({COMBINE_THRESHOLD:,} bytes = 30 MiB + 7, the default "
    "`--xla_gpu_all_reduce_combine_threshold_bytes`); each bucket pays the latency once.",
    "The small all-reduces (BatchNorm statistics forward, their gradients backward) are counted "
    "in the HLO and serialised with compute: each pays its latency, never overlapped.",
    "Two bounds: no overlap (step = compute + serial + gradient all-reduces), and full overlap "
    f"of the gradient all-reduces with the backward pass ({BACKWARD_SHARE:.2f} of the compute; "
    "optimistic: the VGG16 part of the backward pass produces no gradients), except the last "
    "bucket. Efficiency = compute / step. On GPU the overlap needs "
    "`--xla_gpu_enable_latency_hiding_scheduler=true`.",
]


def step_config(depth: int, dtype: str, remat: bool, quick: bool) -> ml_collections.ConfigDict:
    config = config_lib.default_config()
    config.model.update(depth=depth, dtype=dtype, remat=remat)
    if ARGS.loss_dtype:  # set, not overridden: works whether or not the key exists yet
        config.loss.dtype = ARGS.loss_dtype
    if quick:
        config.model.update(base_width=8, max_width=32)
    return config


def abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def split_allreduces(found: list[collectives.Collective], gradient_bytes: int
                     ) -> tuple[list[int], list[int]]:
    """(gradient groups' bytes, the other all-reduces' bytes), both in schedule order.

    The gradient groups are the largest all-reduces that together carry the parameters' bytes
    (the combiner may put a few BatchNorm statistics in with them, never the reverse)."""
    sizes = [c.bytes for c in found if c.op == "all-reduce"]
    taken, total = set(), 0
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if total >= 0.99 * gradient_bytes:
            break
        taken.add(index)
        total += sizes[index]
    return ([b for i, b in enumerate(sizes) if i in taken],
            [b for i, b in enumerate(sizes) if i not in taken])


def compile_row(size: int, depth: int, batch: int, dtype: str, remat: bool, mesh) -> dict:
    """Compiles the train step for `batch` images per device; its per-device figures."""
    config = step_config(depth, dtype, remat, ARGS.quick)
    steps = step_lib.make_steps(config, step_lib.network_graphdef(config))
    model = nnx.eval_shape(lambda: step_lib.create_model(config))  # shapes only: nothing allocated
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    replicated, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                batch_stats=batch_stats,
                                opt_state=jax.eval_shape(steps.tx.init, params))
    state = abstract(state, replicated)
    n = batch * mesh.devices.size
    images = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32, sharding=sharded),
              "mask": jax.ShapeDtypeStruct((n, size, size, 1), jnp.float32, sharding=sharded)}
    vgg = abstract(random_vgg16(jax.random.key(0)), NamedSharding(mesh, P()))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = steps.train.lower(state, images, vgg).compile()
    compile_s = time.perf_counter() - start

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    found = collectives.collectives(compiled.as_text())
    leaves = jax.tree.leaves(params)
    gradients, serial = split_allreduces(found, sum(x.size * x.dtype.itemsize for x in leaves))
    return {
        "size": size, "depth": depth, "batch_per_device": batch, "dtype": dtype, "remat": remat,
        "loss_dtype": config.loss.get("dtype", "float32"),
        "devices_simulated": mesh.devices.size,
        "params": sum(x.size for x in leaves),
        "gflops": cost.get("flops", 0.0) / 1e9,
        "argument_gb": memory.argument_size_in_bytes / 1e9,
        "temp_gb": memory.temp_size_in_bytes / 1e9,
        # Donated state is aliased with the outputs: arguments + temporaries + new outputs.
        "peak_gb_cpu_analysis": (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                                 + memory.output_size_in_bytes
                                 - memory.alias_size_in_bytes) / 1e9,
        "gradient_groups_bytes": gradients,
        "serial_allreduces_bytes": serial,
        "other_collectives": sum(c.op != "all-reduce" for c in found),
        "compile_s": round(compile_s, 1),
    }


def allreduce_seconds(nbytes: float, gpus: int, nic_gb_s: float) -> float:
    """One all-reduce of `nbytes` over `gpus` GPUs (see ASSUMPTIONS)."""
    nvlink = NVLINK_GB_S * 1e9
    if gpus <= HOST_GPUS:
        return NVLINK_LATENCY_US * 1e-6 + 2 * (gpus - 1) / gpus * nbytes / nvlink
    hosts = gpus // HOST_GPUS
    latency = (NVLINK_LATENCY_US + 2 * math.log2(hosts) * HOP_LATENCY_US) * 1e-6
    return (latency + 2 * (HOST_GPUS - 1) / HOST_GPUS * nbytes / nvlink
            + 2 * (hosts - 1) / hosts * nbytes / (HOST_GPUS * nic_gb_s * 1e9))


def buckets(groups: list[int]) -> list[float]:
    """Each gradient group split into equal buckets of at most the GPU combine threshold."""
    out = []
    for group in groups:
        count = max(1, math.ceil(group / COMBINE_THRESHOLD))
        out += [group / count] * count
    return out


def compute_seconds(row: dict) -> float:
    if ARGS.measured_images_per_s:
        return row["batch_per_device"] / ARGS.measured_images_per_s
    return row["gflops"] * 1e9 / (PEAK_TFLOPS[row["dtype"]] * 1e12 * ARGS.mfu)


def project(row: dict, nic_gbit: float) -> dict:
    """Step time and efficiency of `row` on 8, 64 and 512 GPUs with `nic_gbit` NICs."""
    nic_gb_s = nic_gbit / 8 * NIC_EFFICIENCY
    compute = compute_seconds(row)
    grads = buckets(row["gradient_groups_bytes"])
    source = "measured" if ARGS.measured_images_per_s else f"from FLOPs at MFU {ARGS.mfu:g}"
    result = {"nic_gbit": nic_gbit, "compute_ms": 1e3 * compute, "compute_from": source}
    for n in GPU_COUNTS:
        serial = sum(allreduce_seconds(b, n, nic_gb_s) for b in row["serial_allreduces_bytes"])
        grad = [allreduce_seconds(b, n, nic_gb_s) for b in grads]
        no_overlap = compute + serial + sum(grad)
        overlap = compute + serial + max(grad[-1] if grad else 0.0,
                                         sum(grad) - BACKWARD_SHARE * compute)
        result[str(n)] = {
            "serial_ms": 1e3 * serial, "gradient_ms": 1e3 * sum(grad),
            "step_ms_no_overlap": 1e3 * no_overlap, "step_ms_overlap": 1e3 * overlap,
            "efficiency_no_overlap": compute / no_overlap, "efficiency_overlap": compute / overlap,
            "images_per_s_no_overlap": n * row["batch_per_device"] / no_overlap,
            "images_per_s_overlap": n * row["batch_per_device"] / overlap}
    return result


def markdown(rows: list[dict]) -> str:
    head = ("| image, depth | batch/GPU | dtype | remat | compute ms | peak GB (CPU analysis, "
            "not GPU) | gradient MB in buckets | serial all-reduces | NIC per GPU | "
            + " | ".join(f"{n} GPUs" for n in GPU_COUNTS) + f" | {GPU_COUNTS[-1]} GPUs, img/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        grads = buckets(row["gradient_groups_bytes"])
        for p in row["projection"]:
            effs = [f"{100 * p[str(n)]['efficiency_no_overlap']:.0f}–"
                    f"{100 * p[str(n)]['efficiency_overlap']:.0f} %" for n in GPU_COUNTS]
            last = p[str(GPU_COUNTS[-1])]
            last_images = (f"{last['images_per_s_no_overlap']:,.0f}–"
                           f"{last['images_per_s_overlap']:,.0f}")
            lines.append(
                f"| {row['size']}², {row['depth']} | {row['batch_per_device']} | {row['dtype']} | "
                f"{'on' if row['remat'] else 'off'} | {p['compute_ms']:.1f} | "
                f"{row['peak_gb_cpu_analysis']:.2f} | {sum(grads) / 1e6:.0f} in {len(grads)} | "
                f"{len(row['serial_allreduces_bytes'])} | {p['nic_gbit']:g} Gb/s | "
                + " | ".join(effs) + f" | {last_images} |")
    return "\n".join(lines)


def main() -> None:
    mesh = mesh_lib.make_data_mesh()
    shapes = {64: 4} if ARGS.quick else {s: SHAPES[s] for s in map(int, ARGS.sizes.split(","))}
    batches = [1] if ARGS.quick else [int(b) for b in ARGS.batches.split(",")]
    dtypes = ARGS.dtypes.split(",")
    remats = {"off": [False], "on": [True], "both": [False, True]}[ARGS.remat]
    nics = [float(x) for x in ARGS.nic_gbit.split(",")]
    rows = []
    for size, depth in shapes.items():
        for batch in batches:
            for dtype in dtypes:
                for remat in remats:
                    row = compile_row(size, depth, batch, dtype, remat, mesh)
                    row["projection"] = [project(row, nic) for nic in nics]
                    rows.append(row)
                    print(f"compiled {size}² batch {batch} {dtype} remat={remat} "
                          f"in {row['compile_s']} s", file=sys.stderr, flush=True)
    source = (f"measured {ARGS.measured_images_per_s:g} images/s on one GPU"
              if ARGS.measured_images_per_s else f"CPU-compiled FLOPs at MFU {ARGS.mfu:.0%}")
    print(f"Projection (compute from {source}); efficiency per GPU count: no overlap – full "
          "overlap of the gradient all-reduces with the backward pass.\n")
    print(markdown(rows))
    print("\nAssumptions:\n")
    for assumption in ASSUMPTIONS:
        print(f"- {assumption}")
    print()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
