"""Partial-conv UNet vs the identical plain-conv UNet: forward and forward+backward time.

Prints one JSON line per case and pass. Times are medians over `--repeats` runs after a
warm-up; compile time is reported separately. The two networks are timed interleaved so that
a noisy machine affects both alike; the ratio partial/plain is the figure to read.

    python benchmarks/bench_model.py                     # the paper's sizes
    python benchmarks/bench_model.py --width_scale 0.25  # a quicker look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pconv_jax import PConvUNet
from pconv_jax.network.unet import paper_widths

CASES = {"256_d7_b4": (256, 7, 4), "512_d8_b1": (512, 8, 1)}


def make_functions(model: PConvUNet):
    """Jitted pure forward (inference mode) and forward+backward (training mode) functions."""
    model.eval()
    eval_graph, eval_state = nnx.split(model)
    model.train()
    train_graph, train_state = nnx.split(model)

    @jax.jit
    def forward(state, image, mask):
        return nnx.merge(eval_graph, state)(image, mask)

    @jax.jit
    def forward_backward(state, image, mask):
        def loss(params, rest):
            model = nnx.merge(train_graph, params, rest, copy=True)
            out = model(image, mask)
            return jnp.mean(jnp.abs(out - image)), nnx.state(model, nnx.BatchStat)
        params, rest = nnx.split_state(state, nnx.Param, ...)
        return jax.grad(loss, has_aux=True)(params, rest)

    return (forward, eval_state), (forward_backward, train_state)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_case(name, size, depth, batch, args):
    widths = tuple(max(1, int(w * args.width_scale)) for w in paper_widths(depth))
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.random((batch, size, size, 3)), jnp.float32)
    mask = jnp.asarray(rng.random((batch, size, size, 1)) > 0.3, jnp.float32)
    dtype = jnp.dtype(args.dtype)
    nets = {kind: make_functions(PConvUNet(depth=depth, widths=widths, partial=kind == "partial",
                                           dtype=dtype, rngs=nnx.Rngs(0)))
            for kind in ("partial", "plain")}
    for pass_index, pass_name in enumerate(("forward", "forward_backward")):
        compile_s, times = {}, {kind: [] for kind in nets}
        for kind, fns in nets.items():
            fn, state = fns[pass_index]
            compile_s[kind] = timed(fn, state, image, mask)  # compile + first run
            timed(fn, state, image, mask)                     # warm-up
        for _ in range(args.repeats):                         # interleaved
            for kind, fns in nets.items():
                fn, state = fns[pass_index]
                times[kind].append(timed(fn, state, image, mask))
        medians = {kind: statistics.median(t) for kind, t in times.items()}
        print(json.dumps({
            "case": name, "pass": pass_name, "size": size, "depth": depth, "batch": batch,
            "widths": list(widths), "dtype": args.dtype, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "repeats": args.repeats,
            "partial_s": round(medians["partial"], 5), "plain_s": round(medians["plain"], 5),
            "ratio_partial_over_plain": round(medians["partial"] / medians["plain"], 3),
            "compile_first_run_s": {k: round(v, 2) for k, v in compile_s.items()},
        }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width_scale", type=float, default=1.0,
                        help="multiply the paper's widths (1.0 = the paper's network)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    for name in args.cases:
        bench_case(name, *CASES[name], args)


if __name__ == "__main__":
    main()
