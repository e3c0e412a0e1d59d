"""Training checkpoints: Orbax's CheckpointManager behind one small class.

A checkpoint of step s is a directory `<workdir>/checkpoints/<s>/` with three items:

- 'model': {'params', 'batch_stats'}: everything inference needs (`restore_model`);
- 'train': {'opt_state', 'step'}: the rest of the training state;
- 'data':  {'processes': [pipeline state of process 0, 1, ...]} (JSON), so that a resumed run
  sees exactly the batches of an uninterrupted one.

Saves are asynchronous; Orbax writes into a temporary directory and renames it when complete,
so a crash or `kill -9` at any moment leaves every earlier checkpoint intact (an unfinished one
is ignored and cleaned up). Restores take the target shardings from an abstract state, so a
checkpoint written on N devices restores onto M.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from pconv_jax.training import mesh
from pconv_jax.network.unet import PConvUNet

CHECKPOINT_SUBDIR = "checkpoints"


class IncompatibleCheckpointError(ValueError):
    """A checkpoint whose arrays do not have the shapes the config's network expects."""


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of a workdir live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'encoder/1/bn/mean/value': shape, ...} of every array (or array metadata) in a tree."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, (dict, nnx.Variable)))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value"):
            tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def check_compatible(saved: Any, target: Any, where: str) -> None:
    """Raises IncompatibleCheckpointError naming every array whose shape differs (or is missing)."""
    saved_shapes, target_shapes = _flat_shapes(saved), _flat_shapes(target)
    problems = [f"  {k}: checkpoint {saved_shapes[k]} vs config {target_shapes[k]}"
                for k in sorted(saved_shapes.keys() & target_shapes.keys())
                if saved_shapes[k] != target_shapes[k]]
    problems += [f"  {k}: missing in the checkpoint (config expects {target_shapes[k]})"
                 for k in sorted(target_shapes.keys() - saved_shapes.keys())]
    problems += [f"  {k}: in the checkpoint {saved_shapes[k]} but not in the config's network"
                 for k in sorted(saved_shapes.keys() - target_shapes.keys())]
    if problems:
        shown = problems[:20] + ([f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise IncompatibleCheckpointError(
            f"the checkpoint {where} was written by a different network than the config "
            f"describes ({len(problems)} arrays differ):\n" + "\n".join(shown) +
            "\nUse the config the checkpoint was trained with (e.g. the same model.depth, "
            "base_width, max_width), or a fresh workdir.")


def _tree_of(metadata: Any) -> Any:
    """The array tree of an Orbax item metadata (a TreeMetadata or already a tree)."""
    return getattr(metadata, "tree", metadata)


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays, placed with `sharding` (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves and restores {'model', 'train', 'data'} every `save_every_steps`, keeping `keep`.

    Also turns SIGTERM into a final save: `should_stop(step)` becomes True after the signal (or
    when JAX's preemption service reports a preemption on a multi-host run).
    """

    def __init__(self, directory: str, *, save_every_steps: int, keep: int,
                 asynchronous: bool = True, read_only: bool = False):
        self.directory = directory
        self.save_every_steps = max(1, save_every_steps)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, save_every_steps), max_to_keep=keep,
            enable_async_checkpointing=asynchronous, read_only=read_only,
            create=not read_only, cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(
            directory, options=options,
            item_names=("model", "train", "data"),
            item_handlers={"model": ocp.StandardCheckpointHandler(),
                           "train": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})
        self._sigterm = threading.Event()
        self._previous_handler = None

    # ---------------------------------------------------------------- saving
    def save(self, step: int, *, model: Any, train: Any, data_state: dict, force: bool = False) -> bool:
        """Saves asynchronously if `step` is a save step (or `force`); returns whether it did.

        Collective on multi-host runs: every process must call it at the same steps.
        """
        if not force and not self.should_save(step):
            return False
        processes = mesh.allgather_json(data_state)
        return self._manager.save(
            step, force=True,
            args=ocp.args.Composite(model=ocp.args.StandardSave(model),
                                    train=ocp.args.StandardSave(train),
                                    data=ocp.args.JsonSave({"processes": processes})))

    def should_save(self, step: int) -> bool:
        """Whether `step` is a save step (a multiple of save_every_steps)."""
        return step % self.save_every_steps == 0

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
        self.uninstall_signal_handler()

    # ---------------------------------------------------------------- restoring
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _check_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            return max(steps)
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; "
                                    f"available steps: {sorted(steps)}")
        return step

    def restore_model(self, abstract_model: Any, step: int | None = None) -> tuple[Any, int]:
        """({'params', 'batch_stats'}, step) restored onto the shardings of `abstract_model`."""
        step = self._check_step(step)
        saved = _tree_of(self._manager.item_metadata(step)["model"])
        check_compatible(saved, abstract_model, f"{self.directory}/{step}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model)))
        return restored["model"], step

    def restore(self, abstract_model: Any, abstract_train: Any, step: int | None = None
                ) -> tuple[Any, Any, list[dict] | None, int]:
        """(model, train, per-process data states or None, step) of a full training checkpoint."""
        step = self._check_step(step)
        metadata = self._manager.item_metadata(step)
        check_compatible(_tree_of(metadata["model"]), abstract_model, f"{self.directory}/{step}")
        check_compatible(_tree_of(metadata["train"]), abstract_train, f"{self.directory}/{step}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract_model),
            train=ocp.args.StandardRestore(abstract_train),
            data=ocp.args.JsonRestore()))
        data = restored["data"]
        return restored["model"], restored["train"], (data or {}).get("processes"), step

    # ---------------------------------------------------------------- preemption
    def install_signal_handler(self) -> None:
        """SIGTERM sets a flag (the loop then saves and exits) instead of killing the process."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(signal.SIGTERM, lambda *_: self._sigterm.set())

    def uninstall_signal_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def should_stop(self, step: int) -> bool:
        """True once a preemption was announced: save now and stop.

        Multi-host runs rely on JAX's preemption sync service (all processes agree on the step);
        a single process also honours its own SIGTERM flag.
        """
        if jax.process_count() > 1:
            return self._manager.reached_preemption(step)
        return self._sigterm.is_set() or self._manager.reached_preemption(step)


def abstract_model_state(config: ml_collections.ConfigDict, sharding: jax.sharding.Sharding | None = None
                         ) -> tuple[nnx.GraphDef, dict[str, Any]]:
    """(graphdef, abstract {'params', 'batch_stats'}) of the config's network, without allocating it."""
    abstract = nnx.eval_shape(lambda: PConvUNet.from_config(config.model, rngs=nnx.Rngs(0)))
    graphdef, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    shapes = {"params": params, "batch_stats": batch_stats}
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return graphdef, abstract_like(shapes, sharding)


def restore_model(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                  ) -> tuple[PConvUNet, int]:
    """Builds the config's network and loads a checkpoint's parameters and BatchNorm statistics.

    Args:
      config: the config the checkpoint was trained with (reads `config.model`).
      workdir: the training workdir (its `checkpoints/` folder is read).
      step: which checkpoint; None = the latest.

    Returns:
      (model in eval mode, step). Raises FileNotFoundError when there is no such checkpoint and
      IncompatibleCheckpointError (naming the shapes) when the config's network differs.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in workdir {workdir!r} (expected {directory}/)")
    graphdef, abstract = abstract_model_state(config)
    checkpointer = Checkpointer(directory, save_every_steps=1, keep=1, asynchronous=False,
                                read_only=True)
    try:
        state, step = checkpointer.restore_model(abstract, step)
    finally:
        checkpointer.close()
    model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    model.eval()
    return model, step
