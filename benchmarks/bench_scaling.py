"""Data-parallel scaling planned from the compiled train step (compile only, nothing runs).

The train step is compiled for N simulated CPU devices (batch sharded on 'data', parameters
replicated, the paper's loss with VGG16 terms) and read per device:

- FLOPs and bytes accessed (`compiled.cost_analysis()`),
- memory (`compiled.memory_analysis()`: arguments, temporaries, outputs, peak),
- bytes all-reduced per step (the all-reduces of the optimized HLO),

then a step time on a named GPU is projected: compute = FLOPs / (peak x MFU); communication
= ring all-reduce, 2 (n-1)/n x bytes over the slowest link (NVLink-class inside a host of 8
GPUs, network-class across hosts); efficiency = compute / (compute + communication) on 8, 64
and 512 GPUs (no overlap: a lower bound).
Per-device FLOPs, memory and all-reduced bytes do not depend on N, so one compile per row
serves every GPU count. CPU memory analysis is not GPU memory analysis (other fusions, no
cuDNN workspaces, no allocator fragmentation): the "fits" columns are a projection. Nor are
CPU byte counts GPU ones (the CPU runs bfloat16 convolutions in float32), so the bytes accessed
are printed but not used.

    python benchmarks/bench_scaling.py --quick          # tiny widths, one row: a smoke test
    python benchmarks/bench_scaling.py                  # 256^2 depth 7 and 512^2 depth 8, batch 1
    python benchmarks/bench_scaling.py --sizes 256 --batches 1,4,8 --dtypes float32,bfloat16 \
        --remat both                                    # more rows (each compile ~1 min)

Prints a Markdown table, then one JSON line per row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    memory_gb: float        # HBM capacity, 1e9 bytes
    bf16_tflops: float      # peak dense bfloat16 tensor-core FLOP/s, 1e12
    tf32_tflops: float      # peak dense TF32 tensor-core FLOP/s (float32 convs and matmuls)


# NVIDIA's datasheet figures for the SXM parts, dense (no sparsity).
# float32 runs on TF32 tensor cores: JAX's default precision for float32 convolutions on GPU.
ACCELERATORS = (Accelerator("H100-80GB", 80, 989, 494), Accelerator("H200-141GB", 141, 989, 494))
NVLINK_GB_S = 450.0           # per GPU and direction, inside a host of 8
HOST_GPUS = 8
NETWORK_GB_S = (25.0, 50.0)   # per host and direction, across hosts
GPU_COUNTS = (8, 64, 512)
SHAPES = {256: 7, 512: 8}     # image side -> the paper's depth


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--sizes", default="256,512", help="image sides: 256 (depth 7), 512 (8)")
    parser.add_argument("--batches", default="1", help="per-device batch sizes, e.g. 1,4,8")
    parser.add_argument("--dtypes", default="float32", help="float32,bfloat16")
    parser.add_argument("--remat", default="off", choices=("off", "on", "both"))
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation")
    parser.add_argument("--quick", action="store_true",
                        help="tiny widths at 64^2, depth 4, one row: checks the script works")
    return parser.parse_args(argv)


ARGS = parse_args(sys.argv[1:])
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ARGS.devices}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from pconv_jax import config as config_lib  # noqa: E402
from pconv_jax.network.vgg16 import random_vgg16  # noqa: E402
from pconv_jax.testing import collectives  # noqa: E402
from pconv_jax.training import mesh as mesh_lib  # noqa: E402
from pconv_jax.training.step import TrainState, create_model, make_train_step  # noqa: E402


def step_config(depth: int, dtype: str, remat: bool, quick: bool) -> ml_collections.ConfigDict:
    config = config_lib.default_config()
    config.model.update(depth=depth, dtype=dtype, remat=remat)
    if quick:
        config.model.update(base_width=8, max_width=32)
    return config


def abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def compile_row(size: int, depth: int, batch: int, dtype: str, remat: bool, mesh) -> dict:
    """Compiles the train step for `batch` images per device; its per-device figures."""
    config = step_config(depth, dtype, remat, ARGS.quick)
    tx = optax.adam(float(config.train.learning_rate))
    model = nnx.eval_shape(lambda: create_model(config))  # shapes only: nothing allocated
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    replicated, sharded = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    state = abstract(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                batch_stats=batch_stats,
                                opt_state=jax.eval_shape(tx.init, params)), replicated)
    n = batch * mesh.devices.size
    images = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32, sharding=sharded),
              "mask": jax.ShapeDtypeStruct((n, size, size, 1), jnp.float32, sharding=sharded)}
    vgg = abstract(random_vgg16(jax.random.key(0)), NamedSharding(mesh, P()))
    step = make_train_step(graphdef, tx, dict(config.loss.weights), False)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, images, vgg).compile()
    compile_s = time.perf_counter() - start

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    found = collectives.collectives(compiled.as_text())
    leaves = jax.tree.leaves(params)
    return {
        "size": size, "depth": depth, "batch_per_device": batch, "dtype": dtype, "remat": remat,
        "devices_simulated": mesh.devices.size,
        "params": sum(x.size for x in leaves),
        "gflops": cost.get("flops", 0.0) / 1e9,
        "gb_accessed": cost.get("bytes accessed", 0.0) / 1e9,
        "argument_gb": memory.argument_size_in_bytes / 1e9,
        "temp_gb": memory.temp_size_in_bytes / 1e9,
        "output_gb": memory.output_size_in_bytes / 1e9,
        "alias_gb": memory.alias_size_in_bytes / 1e9,
        # Donated state is aliased with the outputs: arguments + temporaries + new outputs.
        "peak_gb": (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                    + memory.output_size_in_bytes - memory.alias_size_in_bytes) / 1e9,
        "allreduce_mb": sum(c.bytes for c in found if c.op == "all-reduce") / 1e6,
        "allreduce_count": sum(c.op == "all-reduce" for c in found),
        "largest_allreduce_mb": max((c.bytes for c in found), default=0) / 1e6,
        # In schedule order: how the combiner grouped the gradients (a split allows overlap).
        "allreduce_schedule_mb": [round(c.bytes / 1e6, 3) for c in found
                                  if c.op == "all-reduce" and c.bytes > 1e5],
        "other_collectives": sum(c.op != "all-reduce" for c in found),
        "compile_s": round(compile_s, 1),
    }


def link_gb_s(gpus: int, network_gb_s: float) -> float:
    return NVLINK_GB_S if gpus <= HOST_GPUS else network_gb_s


def project(row: dict, gpu: Accelerator) -> dict:
    """Step time and scaling efficiency of `row` on `gpu` (see the module docstring)."""
    peak = (gpu.bf16_tflops if row["dtype"] == "bfloat16" else gpu.tf32_tflops) * 1e12
    compute_s = row["gflops"] * 1e9 / (peak * ARGS.mfu)
    result = {"gpu": gpu.name, "fits": row["peak_gb"] <= gpu.memory_gb,
              "compute_ms": 1e3 * compute_s}
    for net in NETWORK_GB_S:
        for n in GPU_COUNTS:
            comm_s = 2 * (n - 1) / n * row["allreduce_mb"] * 1e6 / (link_gb_s(n, net) * 1e9)
            result[f"eff_{n}_net{net:g}"] = compute_s / (compute_s + comm_s)
            result[f"comm_ms_{n}_net{net:g}"] = 1e3 * comm_s
    return result


def markdown(rows: list[dict]) -> str:
    net_lo, net_hi = NETWORK_GB_S
    head = ("| image, depth | batch/GPU | dtype | remat | GFLOP/step | args GB | temp GB | "
            "peak GB | all-reduce MB | GPU | fits | compute ms | efficiency 8 / 64 / 512 GPUs "
            f"({net_lo:g} GB/s) | ({net_hi:g} GB/s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        for p in row["projection"]:
            effs = [" / ".join(f"{100 * p[f'eff_{n}_net{net:g}']:.0f}%" for n in GPU_COUNTS)
                    for net in NETWORK_GB_S]
            lines.append(
                f"| {row['size']}², {row['depth']} | {row['batch_per_device']} | {row['dtype']} | "
                f"{'on' if row['remat'] else 'off'} | {row['gflops']:.0f} | "
                f"{row['argument_gb']:.2f} | {row['temp_gb']:.2f} | {row['peak_gb']:.2f} | "
                f"{row['allreduce_mb']:.0f} | {p['gpu']} | {'yes' if p['fits'] else 'no'} | "
                f"{p['compute_ms']:.1f} | {effs[0]} | {effs[1]} |")
    return "\n".join(lines)


def largest_batches(rows: list[dict]) -> list[dict]:
    """Per (size, dtype, remat) compiled at two or more batch sizes: peak memory and FLOPs
    fitted as a + k x batch through the smallest and largest batch, the largest batch whose
    peak fits each GPU, and the projection at that batch (an extrapolation)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["size"], row["depth"], row["dtype"], row["remat"]), []).append(row)
    fits = []
    for (size, depth, dtype, remat), group in groups.items():
        lo, hi = min(group, key=lambda r: r["batch_per_device"]), max(
            group, key=lambda r: r["batch_per_device"])
        if lo is hi:
            continue
        span = hi["batch_per_device"] - lo["batch_per_device"]
        per_image = {k: (hi[k] - lo[k]) / span for k in ("peak_gb", "gflops", "gb_accessed")}
        fixed = {k: lo[k] - per_image[k] * lo["batch_per_device"] for k in per_image}
        for gpu in ACCELERATORS:
            batch = int((gpu.memory_gb - fixed["peak_gb"]) // per_image["peak_gb"])
            at = dict(lo, batch_per_device=batch,
                      **{k: fixed[k] + per_image[k] * batch for k in per_image})
            fits.append({"size": size, "depth": depth, "dtype": dtype, "remat": remat,
                         "gpu": gpu.name, "largest_batch": batch,
                         "gb_per_image": per_image["peak_gb"], **project(at, gpu)})
    return fits


def fits_markdown(fits: list[dict]) -> str:
    net_lo, net_hi = NETWORK_GB_S
    head = ("| image, depth | dtype | remat | GPU | largest batch/GPU | GB/image | compute ms "
            f"| efficiency 8 / 64 / 512 GPUs ({net_lo:g} GB/s) | ({net_hi:g} GB/s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in fits:
        effs = [" / ".join(f"{100 * f[f'eff_{n}_net{net:g}']:.0f}%" for n in GPU_COUNTS)
                for net in NETWORK_GB_S]
        lines.append(f"| {f['size']}², {f['depth']} | {f['dtype']} | "
                     f"{'on' if f['remat'] else 'off'} | {f['gpu']} | {f['largest_batch']} | "
                     f"{f['gb_per_image']:.2f} | {f['compute_ms']:.0f} | {effs[0]} | {effs[1]} |")
    return "\n".join(lines)


def main() -> None:
    mesh = mesh_lib.make_data_mesh()
    shapes = {64: 4} if ARGS.quick else {s: SHAPES[s] for s in map(int, ARGS.sizes.split(","))}
    batches = [1] if ARGS.quick else [int(b) for b in ARGS.batches.split(",")]
    dtypes = ["float32"] if ARGS.quick else ARGS.dtypes.split(",")
    remats = {"off": [False], "on": [True], "both": [False, True]}[ARGS.remat]
    rows = []
    for size, depth in shapes.items():
        for batch in batches:
            for dtype in dtypes:
                for remat in remats:
                    row = compile_row(size, depth, batch, dtype, remat, mesh)
                    row["projection"] = [project(row, gpu) for gpu in ACCELERATORS]
                    rows.append(row)
                    print(f"compiled {size}² batch {batch} {dtype} remat={remat} "
                          f"in {row['compile_s']} s", file=sys.stderr, flush=True)
    print(f"Projection at MFU {ARGS.mfu:.0%}; ring all-reduce over NVLink {NVLINK_GB_S:g} GB/s "
          f"(<= {HOST_GPUS} GPUs) or the network (per host) beyond; no overlap.\n")
    print(markdown(rows))
    fits = largest_batches(rows)
    if fits:
        print("\nLargest per-device batch whose peak memory fits (linear in the batch, fitted "
              "through the smallest and largest batch compiled), and its projection:\n")
        print(fits_markdown(fits))
    for row in rows:
        print(json.dumps(row))
    for fit in fits:
        print(json.dumps(fit))


if __name__ == "__main__":
    main()
