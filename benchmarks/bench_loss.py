"""Two ways to run the VGG16 of the loss over I_out and I_comp: forward+backward time.

- `two_passes` (what `pconv_jax.loss.losses` does): one VGG pass over I_out, one over I_comp;
- `interleaved`: one VGG pass over a batch of 2N built by stacking (I_out, I_comp) per image
  and merging that axis into the batch, so a device's share of a batch-sharded batch stays
  local (concatenating [I_out, I_comp] along the batch would not: it moves feature maps).

Both compute the same perceptual and style terms; the figure to read is the time ratio.
Times are medians over `--repeats` runs after a warm-up, the two layouts timed interleaved.
Random VGG16 weights (the time does not depend on them).

`--variants`: instead, the whole loss's gradient with respect to the output
(`losses.inpainting_loss`, the paper's weights) for `config.loss.dtype` float32 / bfloat16 x
`config.loss.remat` off / on, timed interleaved: median ms and the compiled program's temporary
memory (XLA's memory analysis of this backend's program), and the activations JAX keeps for the
backward pass (its saved residuals: what remat changes, whatever the backend).

    python benchmarks/bench_loss.py                        # 256 x 256, batch 2, float32
    python benchmarks/bench_loss.py --batch 1 --dtype bfloat16
    python benchmarks/bench_loss.py --variants --size 128 --batch 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pconv_jax.loss import losses
from pconv_jax.network.vgg16 import random_vgg16, vgg16_features


def vgg_terms(pools_out, pools_comp, pools_gt) -> jax.Array:
    """0.05 perceptual + 120 (style_out + style_comp), as in the loss."""
    total = 0.0
    for p_out, p_comp, p_gt in zip(pools_out, pools_comp, pools_gt):
        g_gt = losses.gram_matrix(p_gt)
        total += 0.05 * (losses._l1(p_out, p_gt) + losses._l1(p_comp, p_gt))
        total += 120.0 * (losses._l1(losses.gram_matrix(p_out), g_gt)
                          + losses._l1(losses.gram_matrix(p_comp), g_gt))
    return total


def interleaved_pools(vgg, out, comp):
    """VGG pools of out and comp from one pass over (out_0, comp_0, out_1, comp_1, ...)."""
    n = out.shape[0]
    pairs = jnp.stack([out, comp], axis=1)  # (N, 2, H, W, 3): the new axis is not sharded
    pools = vgg16_features(vgg, pairs.reshape((2 * n,) + out.shape[1:]))
    pools = [p.reshape((n, 2) + p.shape[1:]) for p in pools]
    return tuple(p[:, 0] for p in pools), tuple(p[:, 1] for p in pools)


def make_loss(layout: str):
    def loss(out, comp, gt, vgg):
        pools_gt = vgg16_features(vgg, jax.lax.stop_gradient(gt))
        if layout == "interleaved":
            pools_out, pools_comp = interleaved_pools(vgg, out, comp)
        else:
            pools_out, pools_comp = vgg16_features(vgg, out), vgg16_features(vgg, comp)
        return vgg_terms(pools_out, pools_comp, pools_gt)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def bench_variants(args) -> None:
    """float32 / bfloat16 VGG x remat off / on: ms per gradient and temporary memory."""
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    out, gt = (jnp.asarray(rng.random(shape), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random(shape[:3] + (1,)) > 0.3, jnp.float32)
    vgg = random_vgg16(jax.random.key(0))
    from jax._src.ad_checkpoint import saved_residuals  # no public API for this figure
    variants, residuals = {}, {}
    for dtype in ("float32", "bfloat16"):
        for remat in (False, True):
            def loss(o, gt, mask, vgg, dtype=dtype, remat=remat):
                return losses.inpainting_loss(o, gt, mask, vgg, vgg_dtype=dtype,
                                              vgg_remat=remat)[0]
            variants[(dtype, remat)] = jax.jit(jax.grad(loss)).lower(
                out, gt, mask, vgg).compile()
            residuals[(dtype, remat)] = sum(
                a.size * a.dtype.itemsize for a, _ in saved_residuals(loss, out, gt, mask, vgg))
    times = {key: [] for key in variants}
    for fn in variants.values():
        jax.block_until_ready(fn(out, gt, mask, vgg))  # warm-up
    for _ in range(args.repeats):
        for key, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(out, gt, mask, vgg))
            times[key].append(time.perf_counter() - start)
    for (dtype, remat), fn in variants.items():
        memory = fn.memory_analysis()
        print(json.dumps({"loss_dtype": dtype, "remat": remat, "size": args.size,
                          "batch": args.batch, "backend": jax.default_backend(),
                          "median_ms": round(1e3 * statistics.median(times[(dtype, remat)]), 1),
                          "temp_mib": round(memory.temp_size_in_bytes / 2**20, 1),
                          "residuals_mib": round(residuals[(dtype, remat)] / 2**20, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", action="store_true",
                        help="time loss.dtype x loss.remat instead of the two layouts")
    args = parser.parse_args()
    if args.variants:
        bench_variants(args)
        return

    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, 3)
    out, comp, gt = (jnp.asarray(rng.random(shape), args.dtype) for _ in range(3))
    vgg = random_vgg16(jax.random.key(0))
    fns = {layout: make_loss(layout) for layout in ("interleaved", "two_passes")}
    times: dict[str, list[float]] = {layout: [] for layout in fns}
    compile_s = {}
    for layout, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(out, comp, gt, vgg))  # compile + warm-up
        compile_s[layout] = time.perf_counter() - start
    for _ in range(args.repeats):
        for layout, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(out, comp, gt, vgg))
            times[layout].append(time.perf_counter() - start)
    for layout in fns:
        print(json.dumps({"layout": layout, "size": args.size, "batch": args.batch,
                          "dtype": args.dtype, "backend": jax.default_backend(),
                          "median_s": round(statistics.median(times[layout]), 4),
                          "min_s": round(min(times[layout]), 4),
                          "compile_and_first_s": round(compile_s[layout], 2)}))
    ratio = statistics.median(times["interleaved"]) / statistics.median(times["two_passes"])
    print(json.dumps({"interleaved_over_two_passes": round(ratio, 3)}))


if __name__ == "__main__":
    main()
