"""Training checkpoints: Orbax's CheckpointManager behind one small class.

A checkpoint of step s is a directory `<workdir>/checkpoints/<s>/` with four items:

- 'model': {'params', 'batch_stats'}: everything inference needs (`restore_model`);
- 'train': {'opt_state', 'step'}: the rest of the training state;
- 'data':  {'processes': [pipeline state of process 0, 1, ...]} (JSON), so that a resumed run
  sees exactly the batches of an uninterrupted one;
- 'network': the settings of `config.model` that give the parameters their meaning (JSON, see
  `network_config`); every restore compares them with the config's and refuses a difference.

Saves are asynchronous; Orbax writes into a temporary directory and renames it when complete,
so a crash or `kill -9` at any moment leaves every earlier checkpoint intact (an unfinished one
is ignored and cleaned up). Restores take the target shardings from an abstract state, so a
checkpoint written on N devices restores onto M.

A state with a non-finite value is never saved. A checkpoint that cannot be read (a truncated or
missing file) is skipped with a warning for the newest readable one; a writing Checkpointer moves
it out of Orbax's way into `<workdir>/unreadable_checkpoints/` (kept, never deleted), so that
later saves of the same step do not collide with it. A reader beside a running training (e.g.
`eval.py`) tells a step rotated away while it read from a damaged one: when the step list
changed meanwhile, it lists the steps again and reads the newest.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as logging_lib
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from pconv_jax import files
from pconv_jax.network.unet import PConvUNet
from pconv_jax.training import mesh

CHECKPOINT_SUBDIR = "checkpoints"
NETWORK_ITEM = "network"
# Settings of config.model that leave the parameters' meaning unchanged: how the network computes
# (dtype, remat) and how training updates the BatchNorm statistics (bn_momentum).
NOT_NETWORK_KEYS = ("dtype", "remat", "bn_momentum")

# Reading beside a running training: how often the step list is re-read when it changed while
# a step was being read, and how often one listing is tried when a step vanishes during it.
MAX_RELISTINGS = 20
LISTING_ATTEMPTS = 5

T = TypeVar("T")


class IncompatibleCheckpointError(ValueError):
    """A checkpoint written by another network than the config describes (settings or shapes)."""


class UnreadableCheckpointError(OSError):
    """A checkpoint whose files are missing, truncated or otherwise unreadable."""


class NonFiniteStateError(FloatingPointError):
    """A training state with a NaN or infinity, which is never saved."""


def checkpoint_dir(workdir: str) -> str:
    """Where the checkpoints of a workdir live."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def path_name(path: tuple) -> str:
    """'encoder/1/bn/mean' for a pytree path (an nnx.Variable's '/value' dropped)."""
    return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'encoder/1/bn/mean/value': shape, ...} of every array (or array metadata) in a tree."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, (dict, nnx.Variable)))[0]
    return {path_name(path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


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
        shown = problems[:20] + (
            [f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise IncompatibleCheckpointError(
            f"the checkpoint {where} was written by a different network than the config "
            f"describes ({len(problems)} arrays differ):\n" + "\n".join(shown) +
            "\nUse the config the checkpoint was trained with (e.g. the same model.depth, "
            "base_width, max_width), or a fresh workdir.")


def network_config(model_config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """The settings of `config.model` stored with every checkpoint and checked on restore: all of
    them but NOT_NETWORK_KEYS (as JSON values)."""
    settings = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    return json.loads(json.dumps({k: v for k, v in sorted(settings.items())
                                  if k not in NOT_NETWORK_KEYS}))


def check_network(saved: dict | None, requested: dict | None, where: str) -> None:
    """Raises IncompatibleCheckpointError naming every setting whose values differ.

    `saved` None (a checkpoint without a network record) skips the check with a
    warning. A setting recorded on one side only (added or removed since) is warned about, not
    refused, so that a new setting does not invalidate existing checkpoints.
    """
    if requested is None:
        return
    if saved is None:
        logging.warning("the checkpoint %s does not record its network settings (it predates "
                        "them): they cannot be checked against config.model", where)
        return
    problems = [f"  model.{k}: checkpoint {saved[k]!r} vs config {requested[k]!r}"
                for k in sorted(saved.keys() & requested.keys()) if saved[k] != requested[k]]
    one_sided = sorted(saved.keys() ^ requested.keys())
    if one_sided:
        logging.warning("network settings recorded on one side only, not checked (checkpoint "
                        "%s): %s", where, ", ".join(f"model.{k}" for k in one_sided))
    if problems:
        raise IncompatibleCheckpointError(
            f"the checkpoint {where} was written by a different network than the config "
            f"describes:\n" + "\n".join(problems) + "\nUse the config the checkpoint was "
            "trained with (e.g. without or with `:conv`, the same model.depth), or another "
            "workdir.")


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_arrays(tree: Any) -> list[str]:
    """Names of the floating-point arrays of `tree` holding a NaN or infinity (one jitted
    reduction, one transfer of a bool per array)."""
    leaves = [(path, x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
              if jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.inexact)]
    if not leaves:
        return []
    flags = _finite_flags([x for _, x in leaves])
    flags = np.asarray(flags.addressable_data(0) if isinstance(flags, jax.Array) else flags)
    names = [path_name(path) for path, _ in leaves]
    return [name for name, ok in zip(names, flags) if not ok]


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _tree_of(metadata: Any) -> Any:
    """The array tree of an Orbax item metadata (a TreeMetadata or already a tree)."""
    return getattr(metadata, "tree", metadata)


class _OrbaxDiskFullLogFilter(logging_lib.Filter):
    """Drops Orbax's background-thread reports of a full disk (a traceback per thread): the
    Checkpointer raises one DiskFullError for them."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        error = record.exc_info[1] if record.exc_info else None
        return not (files.is_disk_full(error) or files.mentions_disk_full(record.getMessage()))


_ORBAX_DISK_FULL_LOGS = _OrbaxDiskFullLogFilter()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays, placed with `sharding` (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpointer:
    """Saves and restores {'model', 'train', 'data', 'network'} every `save_every_steps`, keeping
    `keep`.

    `network` (see `network_config`) is saved with every checkpoint and compared with the saved
    one on every restore. `should_stop(step)` says when a preempted run saves and stops.
    """

    def __init__(self, directory: str, *, save_every_steps: int, keep: int,
                 asynchronous: bool = True, read_only: bool = False,
                 network: dict[str, Any] | None = None):
        self.directory = directory
        self.network = network
        self.read_only = read_only
        self.save_every_steps = max(1, save_every_steps)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, save_every_steps), max_to_keep=keep,
            enable_async_checkpointing=asynchronous, read_only=read_only,
            create=not read_only, cleanup_tmp_directories=not read_only)
        self._manager = ocp.CheckpointManager(
            directory, options=options,
            item_names=("model", "train", "data", NETWORK_ITEM),
            item_handlers={"model": ocp.StandardCheckpointHandler(),
                           "train": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           NETWORK_ITEM: ocp.JsonCheckpointHandler()})
        self._saving_step: int | None = None  # of the newest save started
        logging.get_absl_logger().addFilter(_ORBAX_DISK_FULL_LOGS)

    # ---------------------------------------------------------------- saving
    def save(self, step: int, *, model: Any, train: Any, data_state: dict,
             force: bool = False) -> bool:
        """Saves asynchronously if `step` is a save step (or `force`); returns whether it did.

        Raises NonFiniteStateError (saving nothing) if `model` or `train` holds a NaN or
        infinity. Collective on multi-host runs: every process must call it at the same steps.
        """
        if not force and not self.should_save(step):
            return False
        bad = nonfinite_arrays({"model": model, "train": train})
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteStateError(
                f"the training state at step {step} has non-finite values in {len(bad)} arrays "
                f"({shown}); it was not saved and training stopped. {self.last_good_text()}. "
                f"Lower config.train.learning_rate or check the data.")
        processes = mesh.allgather_json(data_state)
        items = dict(model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
                     data=ocp.args.JsonSave({"processes": processes}))
        if self.network is not None:
            items[NETWORK_ITEM] = ocp.args.JsonSave(self.network)
        with self._disk_full_as_one_error():
            started = self._manager.save(step, force=True, args=ocp.args.Composite(**items))
        self._saving_step = step
        return started

    def should_save(self, step: int) -> bool:
        """Whether `step` is a save step (a multiple of save_every_steps)."""
        return step % self.save_every_steps == 0

    def last_good_text(self) -> str:
        """'The last good checkpoint is step N in DIR' (or that there is none), for messages."""
        last = self.latest_step()
        if last is None:
            return "No checkpoint was saved yet"
        return f"The last good checkpoint is step {last} in {self.directory}"

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        with self._disk_full_as_one_error():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._disk_full_as_one_error():
            self._manager.close()

    @contextlib.contextmanager
    def _disk_full_as_one_error(self) -> Iterator[None]:
        """A save that failed on a full disk (now, or in the background since the last call)
        becomes one DiskFullError naming the disk, its free space and the last good step.

        Orbax only ever renames a complete checkpoint into place and removes old steps after
        that, so the earlier checkpoints are intact."""
        try:
            yield
        except Exception as e:
            if not files.is_disk_full(e):
                raise
            failed = f"step {self._saving_step}" if self._saving_step is not None else "a step"
            try:
                steps = self._listed_steps()
            except OSError:
                steps = []
            kept = (f"the last good checkpoint is step {steps[0]}" if steps
                    else "no checkpoint was saved before")
            err = files.DiskFullError(
                f"disk full: saving the checkpoint of {failed} into {self.directory} failed "
                f"({files.disk_full_text(self.directory)}); {kept}. Free some space"
                + (" (or keep fewer checkpoints: config.train.keep_checkpoints)"
                   if len(steps) > 1 else "") + " and run the same command again to resume")
            err.errno = errno.ENOSPC
            raise err from e

    # ---------------------------------------------------------------- restoring
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _step_path(self, step: int) -> str:
        return f"{self.directory}/{step}"

    def _saved_network(self, step: int) -> dict | None:
        """The step's 'network' item, or None for a checkpoint written before it existed."""
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(os.path.join(step_dir, NETWORK_ITEM)):
            if not os.path.isdir(step_dir):  # removed while being read: not an old checkpoint
                raise FileNotFoundError(f"{step_dir} was removed")
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{NETWORK_ITEM: ocp.args.JsonRestore()}))
        return restored[NETWORK_ITEM]

    def _checked_metadata(self, step: int, abstract: dict[str, Any]) -> None:
        """Checks the step's network settings, then its array shapes against `abstract`
        ({'model': tree, 'train': tree}): IncompatibleCheckpointError on a difference."""
        metadata = self._manager.item_metadata(step)
        where = self._step_path(step)
        check_network(self._saved_network(step), self.network, where)
        for name, target in abstract.items():
            saved = _tree_of(metadata[name]) if name in metadata else None
            if saved is None or not _flat_shapes(saved):  # Orbax reads a lost _METADATA as empty
                raise UnreadableCheckpointError(f"the array metadata of item {name!r} is "
                                                f"missing or empty")
            check_compatible(saved, target, where)

    def _listed_steps(self) -> list[int]:
        """The steps on disk now, newest first (re-read: a running training adds and rotates
        steps while this process reads)."""
        for attempt in range(LISTING_ATTEMPTS):
            try:
                self._manager.reload()
                return sorted(self.all_steps(), reverse=True)
            except OSError:  # a step removed while Orbax read its metadata
                if attempt == LISTING_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _restore_newest_readable(self, step: int | None, restore: Callable[[int], T]) -> T:
        """`restore(step)`, or with step None that of the newest readable step.

        A step that fails while the listing changes (a running training saved a newer step and
        rotated older ones away, or removes this one) is not damaged: the steps are listed
        again and the newest is read. A step that fails while the listing stays the same is
        unreadable: it is skipped with a warning; once a readable one is restored, a writing
        Checkpointer moves the newer unreadable ones aside. An incompatible checkpoint is an
        error at once (an older step would be incompatible too).
        """
        if step is not None:
            return self._restore_step(step, restore)
        steps = self._listed_steps()
        for _ in range(MAX_RELISTINGS):
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            unreadable, changed = [], False
            for candidate in steps:
                try:
                    result = restore(candidate)
                except IncompatibleCheckpointError:
                    raise
                except Exception as e:  # Orbax and TensorStore raise many types for damaged files
                    now = self._listed_steps()
                    if now != steps:
                        logging.info("the checkpoints in %s changed while step %d was read "
                                     "(a running training saves into them); reading again",
                                     self.directory, candidate)
                        steps, changed = now, True
                        break
                    logging.warning("the checkpoint %s is unreadable (%s); trying an earlier step",
                                    self._step_path(candidate), _first_line(e))
                    unreadable.append((candidate, _first_line(e)))
                    continue
                if unreadable:
                    logging.warning("restored step %d of %s; newer unreadable step(s) %s",
                                    candidate, self.directory,
                                    ", ".join(str(s) for s, _ in unreadable))
                    self._set_aside([s for s, _ in unreadable])
                return result
            if not changed:
                raise UnreadableCheckpointError(
                    f"no readable checkpoint in {self.directory}:\n  " + "\n  ".join(
                        f"step {s}: {reason}" for s, reason in unreadable) +
                    "\nRestore the files, or move the checkpoints away to start afresh.")
        raise UnreadableCheckpointError(
            f"the checkpoints in {self.directory} changed {MAX_RELISTINGS} times while being "
            f"read: a running training saves and rotates them faster than they can be read. "
            f"Try again, or read a copy of the workdir (or save less often, "
            f"config.train.checkpoint_every_steps).")

    def _restore_step(self, step: int, restore: Callable[[int], T]) -> T:
        """`restore(step)` of one named step; its removal while being read is not damage."""
        self._check_step(step)
        try:
            return restore(step)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # as above
            now = self._listed_steps()
            if step not in now:
                raise FileNotFoundError(
                    f"the checkpoint of step {step} in {self.directory} was removed while being "
                    f"read (a running training keeps only its newest steps); available steps "
                    f"now: {sorted(now)}") from e
            raise UnreadableCheckpointError(
                f"the checkpoint {self._step_path(step)} is unreadable ({_first_line(e)}); "
                f"choose another step (available: {sorted(now)})") from e

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable steps to <workdir>/unreadable_checkpoints/ (a writing Checkpointer
        only): kept for inspection, out of the way of the steps this run will save."""
        if self.read_only:
            return
        parent, name = os.path.split(os.path.abspath(self.directory))
        aside = os.path.join(parent, f"unreadable_{name}")
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target, n = os.path.join(aside, str(step)), 1
                while os.path.exists(target):
                    target, n = os.path.join(aside, f"{step}.{n}"), n + 1
                shutil.move(os.path.join(self.directory, str(step)), target)
                logging.warning("moved the unreadable checkpoint %s to %s",
                                self._step_path(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("pconv_jax: unreadable checkpoints set aside")
        self._manager.reload()

    def _check_step(self, step: int) -> int:
        steps = self._listed_steps()
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; "
                                    f"available steps: {sorted(steps)}")
        return step

    def restore_model(self, abstract_model: Any, step: int | None = None) -> tuple[Any, int]:
        """({'params', 'batch_stats'}, step) restored onto the shardings of `abstract_model`.

        Step None: the newest readable step."""
        def restore(step: int) -> tuple[Any, int]:
            self._checked_metadata(step, {"model": abstract_model})
            restored = self._manager.restore(
                step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model)))
            return restored["model"], step
        return self._restore_newest_readable(step, restore)

    def restore(self, abstract_model: Any, abstract_train: Any, step: int | None = None
                ) -> tuple[Any, Any, list[dict] | None, int]:
        """(model, train, per-process data states or None, step) of a full training checkpoint.

        Step None: the newest readable step."""
        def restore(step: int) -> tuple[Any, Any, list[dict] | None, int]:
            self._checked_metadata(step, {"model": abstract_model, "train": abstract_train})
            restored = self._manager.restore(step, args=ocp.args.Composite(
                model=ocp.args.StandardRestore(abstract_model),
                train=ocp.args.StandardRestore(abstract_train),
                data=ocp.args.JsonRestore()))
            data = restored["data"]
            return restored["model"], restored["train"], (data or {}).get("processes"), step
        return self._restore_newest_readable(step, restore)

    # ---------------------------------------------------------------- preemption
    def should_stop(self, step: int, terminated: bool = False) -> bool:
        """True once a preemption was announced: save now and stop.

        Multi-host runs rely on JAX's preemption sync service (all processes agree on the step);
        a single process also honours `terminated`, its own SIGTERM (`signals.Sigterm`).
        """
        if jax.process_count() > 1:
            return self._manager.reached_preemption(step)
        return terminated or self._manager.reached_preemption(step)


def abstract_model_state(config: ml_collections.ConfigDict,
                         sharding: jax.sharding.Sharding | None = None
                         ) -> tuple[nnx.GraphDef, dict[str, Any]]:
    """(graphdef, abstract {'params', 'batch_stats'}) of the config's network, without
    allocating it."""
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
      (model in eval mode, step). Step None takes the newest readable checkpoint (an unreadable
      newer one is skipped with a warning). Raises FileNotFoundError when there is no such
      checkpoint, UnreadableCheckpointError when none can be read, and
      IncompatibleCheckpointError (naming the settings or shapes) when the config's network
      differs from the checkpoint's.
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in workdir {workdir!r} (expected {directory}/)")
    graphdef, abstract = abstract_model_state(config)
    checkpointer = Checkpointer(directory, save_every_steps=1, keep=1, asynchronous=False,
                                read_only=True, network=network_config(config.model))
    try:
        state, step = checkpointer.restore_model(abstract, step)
    finally:
        checkpointer.close()
    model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    model.eval()
    return model, step
