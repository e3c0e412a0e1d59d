"""Training: `train_and_evaluate(config, workdir)`, the paper's two-stage recipe on every device.

One `jax.jit` step over a 1-D mesh of all devices ('data'): parameters replicated, the batch
sharded, so BatchNorm statistics are global over the whole batch and gradients come back summed.
Metrics stay on the devices until a log step (no per-step host synchronisation); the non-finite
loss check runs there, and before every checkpoint so that no NaN state is ever saved.

Resume order: the workdir's own latest checkpoint -> `config.train.init_from` (network only,
e.g. fine-tuning from the train stage) -> a fresh initialisation.

One run per workdir (a lock, see `workdir.py`). Before the first step (the start) nothing is
written: the settings are compared with the earlier run's config.json (`workdir.ConfigHistory`),
the checkpoint is restored and checked, the held-out batch is read; only then are config.json
(the earlier one kept if the settings changed) and the logs written. A failed start removes the
folders it created. A preempted run (SIGTERM) saves, then ends with status 143. Ctrl-C
(SIGINT) stops the run at the end of the current step without a final save (the checkpoints
already written stay; a save in progress is completed); a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from pconv_jax import config as config_lib
from pconv_jax.data import heldout
from pconv_jax.data import sources as data_sources
from pconv_jax.data.masks import generate_mask
from pconv_jax.loss import losses
from pconv_jax.training import checkpoints, logs, signals
from pconv_jax.training import workdir as workdir_lib
from pconv_jax.training.mesh import global_batch, make_data_mesh, replicate, replicated
from pconv_jax.training.step import (
    Steps,
    TrainState,
    create_train_state,
    learning_rate_schedule,
    make_steps,
    network_graphdef,
)

# The exit status of a preempted run after its final save: 128 + SIGTERM, what a process killed by
# SIGTERM reports, so that schedulers requeue it instead of counting it as finished.
EXIT_PREEMPTED = 143


class Preempted(SystemExit):
    """Raised by `train_and_evaluate` once a preempted run's final save is on disk.

    A SystemExit: uncaught, it ends the process with status EXIT_PREEMPTED (143).
    """

    def __init__(self, step: int, state: TrainState):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.state = step, state


def eval_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The fixed held-out batch: the first eval_batch_size held-out images with seeded masks."""
    count = int(config.train.eval_batch_size)
    images = np.asarray(heldout.load_eval_images(
        config.data, count, heldout.eval_image_size(config),
        count_setting="config.train.eval_batch_size"), np.float32)
    size = images.shape[1:3]
    masks = np.stack([generate_mask((config.seed, 10_000 + i), size,
                                    hole_ratio_range=(config.masks.hole_ratio_min,
                                                      config.masks.hole_ratio_max))
                      for i in range(count)])
    return {"image": images, "mask": masks}


# ----------------------------------------------------------------------------- the loop

def _restore_or_init(config, checkpointer, tx, mesh, pipeline):
    """(graphdef, state): own checkpoint -> config.train.init_from -> fresh init."""
    graphdef, state = create_train_state(config, tx, mesh)
    sharding = replicated(mesh)
    abstract_model = checkpoints.abstract_like(state.model_item(), sharding)
    if checkpointer.latest_step() is not None:
        abstract_train = checkpoints.abstract_like(state.train_item(), sharding)
        model, train, data_states, step = checkpointer.restore(abstract_model, abstract_train)
        state = TrainState(params=model["params"], batch_stats=model["batch_stats"], **train)
        index, count = jax.process_index(), jax.process_count()
        if data_states is not None and len(data_states) == count:
            pipeline.set_state(data_states[index])
        else:
            logging.warning("checkpoint data-pipeline state is for %s processes, this run has %d: "
                            "the pipeline restarts from its beginning",
                            None if data_states is None else len(data_states), count)
        logging.info("resumed from %s at step %d", checkpointer.directory, step)
    elif config.train.init_from:
        init_dir = checkpoints.checkpoint_dir(config.train.init_from)
        if not os.path.isdir(init_dir):
            raise FileNotFoundError(
                f"config.train.init_from = {config.train.init_from!r} holds no checkpoints "
                f"({init_dir}): run the train stage first, or point init_from at its workdir")
        source = checkpoints.Checkpointer(init_dir, save_every_steps=1, keep=1,
                                          asynchronous=False, read_only=True,
                                          network=checkpoints.network_config(config.model))
        try:
            model, step = source.restore_model(abstract_model)
        finally:
            source.close()
        state = state.replace(params=model["params"], batch_stats=model["batch_stats"],
                              opt_state=replicate(tx.init(model["params"]), mesh))
        logging.info("initialised the network from %s (step %d)", init_dir, step)
    return graphdef, state


class MetricsWindow:
    """Per-step metrics kept on the devices until a log step, then averaged and checked.

    Fetching them only at log steps keeps the loop free of per-step host synchronisation.
    """

    def __init__(self, first_step: int):
        self.start, self._history = first_step, []

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self._history.append(metrics)

    def flush(self, step: int, last_checkpoint: str) -> dict[str, float]:
        """Means over the window; FloatingPointError naming the step if a loss is not finite."""
        if not self._history:
            return {}
        host = jax.device_get(self._history)
        finite = np.isfinite([m["loss"] for m in host])
        if not finite.all():
            bad = self.start + int(np.argmin(finite))
            raise FloatingPointError(
                f"non-finite loss at step {bad} (in steps {self.start}..{step}); training "
                f"stopped. {last_checkpoint}. Lower config.train.learning_rate or check the data.")
        self.start, self._history = step + 1, []
        return logs.mean_metrics(host)


def _last_checkpoint_text(checkpointer: checkpoints.Checkpointer) -> str:
    return checkpointer.last_good_text()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       steps: Steps | None = None,
                       allow_config_change: bool = False) -> TrainState:
    """Trains (or fine-tunes) per `config`, checkpointing and logging into `workdir`.

    `steps`: the optimizer and jitted steps for this config's network (`make_steps`), built
    here when None; passing them lets several runs in one process share their compilations.
    `allow_config_change`: resume even if the data, masks, seed or stage differ from the
    workdir's config.json (see `workdir.ConfigHistory`).
    Returns the final TrainState. Raises FloatingPointError when the loss or the state to be
    saved is not finite (the last checkpoint stays the last good one), WorkdirBusyError when
    another run holds the workdir, and Preempted (a SystemExit with status 143) after the final
    save of a run stopped by SIGTERM. A run that fails before its first step leaves no folder it
    created and an unchanged config.json.
    """
    # --- Checks and frozen VGG, before the workdir exists.
    mesh = make_data_mesh()
    config_lib.validate(config, mesh.size)
    data_sources.get(config.data.name).check(config.data)  # e.g. a TFDS set not prepared
    vgg = losses.vgg_for_config(config.loss)  # None: no VGG term on and no file named
    vgg = None if vgg is None else replicate(vgg, mesh)
    cleanup = workdir_lib.CleanupIfStartFails(workdir, checkpoints.checkpoint_dir(workdir))
    workdir = workdir_lib.prepare_workdir(workdir)
    with workdir_lib.WorkdirLock(workdir, jax.process_index()), cleanup:
        history = workdir_lib.ConfigHistory(workdir, allow_changes=allow_config_change)
        return _train(config, workdir, mesh, vgg, steps, history, cleanup)


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh, vgg,
           steps: Steps | None, history: workdir_lib.ConfigHistory,
           cleanup: workdir_lib.CleanupIfStartFails) -> TrainState:
    """The run itself, in a locked workdir."""
    from pconv_jax.data import pipeline as data_pipeline  # TensorFlow: only when training

    steps = steps or make_steps(config, network_graphdef(config))
    tx = steps.tx
    pipeline = data_pipeline.create_train_pipeline(config, seed=config.seed)
    checkpointer = None
    try:
        checkpointer = checkpoints.Checkpointer(
            checkpoints.checkpoint_dir(workdir),
            save_every_steps=config.train.checkpoint_every_steps,
            keep=config.train.keep_checkpoints, asynchronous=config.train.async_checkpoints,
            network=checkpoints.network_config(config.model))
        # --- Start: compare with the earlier run's settings, restore, the held-out batch; only
        # then config.json and the logs (a failed start changes nothing).
        history.check(config, checkpointer.latest_step())
        _, state = _restore_or_init(config, checkpointer, tx, mesh, pipeline)
        train_step, eval_step = steps.train, steps.eval
        held_out = eval_batch(config)
        held_out_global = {k: jax.make_array_from_process_local_data(replicated(mesh), v)
                           for k, v in held_out.items()}
        if jax.process_index() == 0:
            history.record()
        writer = logs.create_writer(workdir)
        cleanup.started()
        num_steps = int(config.train.num_steps)
        first_step = int(jax.device_get(state.step)) + 1
        if first_step > num_steps:
            logging.info("nothing to do: the checkpoint is at step %d >= num_steps %d",
                         first_step - 1, num_steps)
        report_progress = logs.progress_reporter(num_steps)
        throughput = logs.Throughput(config.data.batch_size)
        throughput.measure(first_step - 1)
        window = MetricsWindow(first_step)
        data_wait = logs.DataWait(*data_pipeline.parallelism(config.data))
        learning_rate = learning_rate_schedule(config.train)  # of update t = step - 1

        # --- The loop.
        with jax.set_mesh(mesh), signals.Sigterm() as sigterm, signals.CtrlC() as ctrl_c:
            for step in range(first_step, num_steps + 1):
                ctrl_c.check(step)
                batch = global_batch(data_wait.next(pipeline, state.step), mesh)  # uint8
                state, metrics = train_step(state, batch, vgg)
                window.add(metrics)
                report_progress(step)
                last = step == num_steps
                stop = checkpointer.should_stop(step, terminated=sigterm.received)
                save = last or stop or checkpointer.should_save(step)
                if save or step % config.train.log_every_steps == 0:
                    # Also the non-finite check, so that a NaN state is never saved.
                    summary = window.flush(step, _last_checkpoint_text(checkpointer))
                    summary.update(data_wait.measure(step))
                    summary.update(throughput.measure(step),
                                   learning_rate=float(learning_rate(step - 1)))
                    writer.write_scalars(step, summary)
                if last or step % config.train.eval_every_steps == 0:
                    log_held_out(eval_step, state, held_out, held_out_global, writer, step)
                if save:
                    checkpointer.save(step, model=state.model_item(), train=state.train_item(),
                                      data_state=pipeline.get_state(), force=last or stop)
                if stop:
                    logging.warning("preemption: saved step %d, stopping with status %d",
                                    step, EXIT_PREEMPTED)
                    writer.flush()
                    raise Preempted(step, state)  # after `finally` has waited for the save
        writer.flush()
        return state
    finally:
        pipeline.close()  # its threads or worker processes: none outlives the run
        if checkpointer is not None:
            checkpointer.wait()
            checkpointer.close()


def log_held_out(eval_step, state, held_out, held_out_global, writer, step: int
                 ) -> dict[str, float]:
    """L1 / PSNR on the fixed held-out batch and its image grid, written at `step`."""
    metrics, output, comp = eval_step(state, held_out_global)
    metrics = {f"eval_{k}": float(v) for k, v in jax.device_get(metrics).items()}
    writer.write_scalars(step, metrics)
    grid = logs.image_grid(held_out["image"], held_out["mask"], np.asarray(jax.device_get(output)),
                           np.asarray(jax.device_get(comp)))
    writer.write_images(step, {"held_out": grid[None]})
    return metrics
