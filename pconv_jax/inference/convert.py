"""Turns a public PyTorch PConv checkpoint into a pconv_jax workdir.

    python -m pconv_jax.inference.convert naoto0804 1000000.pth workdirs/places2_naoto0804
    python -m pconv_jax.inference.convert mmagic \
        pconv_256x256_stage2_4x2_places_20200619-1ffed0e8.pth workdirs/places2_mmagic

The workdir then holds `config.json` and a checkpoint (step 0) written by the same code that
training uses, so `inpaint.py`, `eval.py` and fine-tuning (`--config.train.init_from=WORKDIR`)
take it unchanged, plus `conversion.json` (source, file, SHA-256, upstream step). The workdir
is built in a temporary directory next to it and renamed into place when complete; an existing
checkpoint is only replaced with `--force`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

from absl import flags
from flax import nnx

from pconv_jax import cli, files
from pconv_jax import config as config_lib
from pconv_jax.training import checkpoints, mesh
from pconv_jax.training.step import create_train_state, make_optimizer
from pconv_jax.weights import pconv_checkpoints


def define_flags() -> None:
    """The command's flags (defined by the command only, so that importing this module doesn't)."""
    flags.DEFINE_bool("force", False, "replace the checkpoint of an existing workdir")
    flags.DEFINE_enum("channel_order", None, ["rgb", "bgr"],
                      "channel order of the images upstream trained on (default: naoto0804 rgb, "
                      "mmagic bgr)")

USAGE = "usage: python -m pconv_jax.inference.convert naoto0804|mmagic FILE WORKDIR [--force]"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_target(workdir: str, force: bool) -> None:
    """A new or empty directory is fine; an existing workdir is replaced only with `force`; a
    non-empty directory that is not a workdir (no config.json, no checkpoints/) never is."""
    if not os.path.exists(workdir):
        return
    if not os.path.isdir(workdir):
        raise FileExistsError(f"{workdir!r} exists and is not a directory")
    entries = set(os.listdir(workdir))
    if not entries:
        return
    if not entries & {"config.json", "checkpoints"}:
        raise FileExistsError(f"{workdir!r} is a non-empty directory that is not a pconv_jax "
                              "workdir; name a new or empty directory")
    if not force:
        what = "holds a checkpoint" if "checkpoints" in entries else "exists as a workdir"
        raise FileExistsError(f"{workdir!r} already {what}; pass --force to replace the workdir")


def full_config(model_config, experiment: str):
    """The config training would write for this network (data, loss, eval at defaults)."""
    config = config_lib.default_config()
    config.experiment = experiment
    config.model = model_config
    return config


def write_checkpoint(config, model, workdir: str) -> None:
    """Step 0 of `workdir/checkpoints`, through the training code's Checkpointer: the network's
    weights, a fresh optimizer state and a data pipeline at its start."""
    devices = mesh.make_data_mesh()
    tx = make_optimizer(config.train)
    _, fresh = create_train_state(config, tx, devices)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = mesh.replicate((params, batch_stats), devices)
    state = fresh.replace(params=params, batch_stats=batch_stats,
                          opt_state=mesh.replicate(tx.init(params), devices))
    checkpointer = checkpoints.Checkpointer(
        checkpoints.checkpoint_dir(workdir), save_every_steps=1, keep=1, asynchronous=False,
        network=checkpoints.network_config(config.model))
    try:
        checkpointer.save(0, model=state.model_item(), train=state.train_item(),
                          data_state={"position": 0}, force=True)
        checkpointer.wait()
    finally:
        checkpointer.close()


def convert_to_workdir(source: str, path: str, workdir: str, *, force: bool = False,
                       channel_order: str | None = None) -> str:
    """Converts `path` into `workdir` (atomically: temporary directory, then rename)."""
    workdir = os.path.abspath(workdir)
    check_target(workdir, force)
    converted = pconv_checkpoints.convert(source, path, channel_order=channel_order)
    config = full_config(converted.config, os.path.basename(workdir))
    parent = os.path.dirname(workdir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.converting-", dir=parent)
    try:
        files.write_text_atomically(os.path.join(staging, "config.json"),
                                    config.to_json_best_effort(indent=2))
        files.write_text_atomically(os.path.join(staging, "conversion.json"), json.dumps(
            {"source": source, "file": os.path.abspath(path), "sha256": _sha256(path),
             "upstream_step": converted.upstream_step,
             "channel_order": converted.channel_order}, indent=2))
        write_checkpoint(config, converted.model, staging)
        _replace(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return workdir


def _replace(staging: str, workdir: str) -> None:
    """Renames `staging` to `workdir`; an existing workdir is moved aside first, then removed."""
    if not os.path.exists(workdir):
        os.rename(staging, workdir)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.replaced-",
                           dir=os.path.dirname(workdir))
    os.rename(workdir, os.path.join(old, "workdir"))
    try:
        os.rename(staging, workdir)
    except BaseException:
        os.rename(os.path.join(old, "workdir"), workdir)  # put the original back
        raise
    shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str]) -> None:
    args = list(argv[1:])
    if len(args) != 3:
        raise ValueError(f"expected SOURCE FILE WORKDIR, got {len(args)} arguments; {USAGE}")
    source, path, workdir = args
    if source not in pconv_checkpoints.SOURCES:
        raise ValueError(f"unknown source {source!r}: use one of "
                         f"{', '.join(pconv_checkpoints.SOURCES)}; {USAGE}")
    workdir = convert_to_workdir(source, path, workdir, force=flags.FLAGS.force,
                                 channel_order=flags.FLAGS.channel_order)
    print(f"wrote {workdir} (from {source} {path})")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
