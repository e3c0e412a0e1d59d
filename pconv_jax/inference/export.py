r"""A trained network as a `jax.export` artifact: inpainting without Flax or this project.

    python -m pconv_jax.inference.export --workdir WORKDIR --out model.jaxexport

The artifact is the serialized StableHLO of one function, `(image, mask) -> composite`:
images (N, H, W, 3) float32 in [0, 1], masks (N, H, W, 1) float32, 1 = valid (values > 0.5);
the result is the composite in [0, 1] (known pixels from the image, holes from the network).
N, H and W are symbolic: any batch size, any H and W that are multiples of 2**depth (the
artifact refuses other sides). The weights are constants inside the artifact; with
`--weights_out W.npz` they are written to that file instead and the artifact takes them as its
first argument, `{"params/...": array, "state/...": array}` (`dict(numpy.load(W.npz))`). Running
it needs `jax` only:

    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    composite = exported.call(image, mask)

It is one pass of the network: hole pixels beyond the network's reach come back as the
network's 0 output (black), where `inpaint.py` fills them from downscaled copies, and the sides
must already be multiples of 2**depth (`inpaint.py` pads). The artifact holds code lowered for
`--platforms` (default cpu, cuda and tpu). It is not a training checkpoint: it cannot be
trained or fine-tuned, and a newer jaxlib runs it only within `jax.export`'s compatibility
window (see its documentation).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from absl import app, flags

from pconv_jax import cli, files, functional
from pconv_jax.network.unet import PConvUNet, composite

PLATFORMS = ("cpu", "cuda", "tpu")


def define_flags() -> None:
    """The command's flags (defined by the command only, so that importing this module doesn't)."""
    flags.DEFINE_string("workdir", None, "training workdir (checkpoints, config.json)")
    flags.DEFINE_string("out", None, "the artifact to write, e.g. model.jaxexport")
    flags.DEFINE_string("config", None, "config file (path.py[:arg] or config.json) if the "
                        "workdir has none")
    flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: latest)")
    flags.DEFINE_list("platforms", list(PLATFORMS), "platforms the artifact can run on")
    flags.DEFINE_string("weights_out", None, "write the weights to this .npz and make them the "
                        "artifact's first argument (default: baked into the artifact)")


def export_inpainter(model: PConvUNet, *, platforms: Sequence[str] = PLATFORMS,
                     weights_as_argument: bool = False) -> bytes:
    """The serialized `jax.export` artifact of `(image, mask) -> composite` (module docstring).

    With `weights_as_argument`, the function is `(weights, image, mask)` where `weights` is
    `functional.flatten({"params": params, "state": state})` of `functional.split(model)`.
    """
    apply, params, state = functional.split(model)
    multiple = 2**model.depth

    def inpaint(weights, image, mask):
        trees = functional.unflatten(weights)
        output, _ = apply(trees["params"], trees.get("state", {}), image, mask)
        return jnp.clip(composite(output, image, mask), 0.0, 1.0)

    weights = functional.flatten({"params": params, "state": state})
    batch, height, width = jax.export.symbolic_shape("b, h, w")
    spatial = (batch, multiple * height, multiple * width)
    image = jax.ShapeDtypeStruct(spatial + (model.in_channels,), jnp.float32)
    mask = jax.ShapeDtypeStruct(spatial + (1,), jnp.float32)
    if weights_as_argument:
        function, args = inpaint, (jax.tree.map(_abstract, weights), image, mask)
    else:
        function, args = (lambda image, mask: inpaint(weights, image, mask)), (image, mask)
    exported = jax.export.export(jax.jit(function), platforms=tuple(platforms))(*args)
    return bytes(exported.serialize())


def _abstract(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def write(path: str | os.PathLike, artifact: bytes) -> None:
    """Writes an artifact atomically: no reader sees half of it, an error leaves the old file."""
    with files.atomic_output(path, "wb") as f:
        f.write(artifact)


def load(path: str | os.PathLike) -> Callable:
    """The artifact's function, `(image, mask) -> composite` (or `(weights, image, mask)`).

    Uses `jax.export` only: the same two lines run where this project is not installed."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read())).call


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    missing = [f"--{name}" for name in ("workdir", "out") if not args[name].value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (see --help)")
    unknown = sorted(set(args.platforms) - set(PLATFORMS))
    if unknown or not args.platforms:
        raise ValueError(f"--platforms: unknown platform(s) {unknown}; use some of "
                         f"{','.join(PLATFORMS)}")
    for flag, path in (("--out", args.out), ("--weights_out", args.weights_out)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"{flag} {path!r}: its folder does not exist")
    from pconv_jax import config as config_lib
    from pconv_jax.training import checkpoints
    config = (config_lib.load_config(args.config) if args.config
              else config_lib.load_workdir_config(args.workdir))
    model, step = checkpoints.restore_model(config, args.workdir, step=args.checkpoint)
    artifact = export_inpainter(model, platforms=args.platforms,
                                weights_as_argument=bool(args.weights_out))
    if args.weights_out:
        functional.save_npz(args.weights_out, *functional.split(model)[1:])
    write(args.out, artifact)
    print(f"wrote {args.out} (step {step}, {len(artifact)} bytes, for "
          f"{','.join(args.platforms)})")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
