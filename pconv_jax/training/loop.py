"""Training: `train_and_evaluate(config, workdir)`, the paper's two-stage recipe on every device.

One `jax.jit` step over a 1-D mesh of all devices ('data'): parameters replicated, the batch
sharded, so BatchNorm statistics are global over the whole batch and gradients come back summed.
Metrics stay on the devices until a log step (no per-step host synchronisation); the non-finite
loss check runs there, and before every checkpoint so that no NaN state is ever saved.

Resume order: the workdir's own latest checkpoint -> `config.train.init_from` (network only,
e.g. fine-tuning from the train stage) -> a fresh initialisation.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from pconv_jax.training import checkpoints as checkpointing
from pconv_jax.training import mesh as parallel
from pconv_jax.training import logs
from pconv_jax.training.step import TrainState, create_train_state, make_optimizer, steps_for
from pconv_jax.data.masks import generate_mask

VGG_TERMS = ("perceptual", "style_out", "style_comp")


def load_vgg(config: ml_collections.ConfigDict):
    """The frozen VGG16 weights when a perceptual or style weight is > 0, else None."""
    if max(float(config.loss.weights[t]) for t in VGG_TERMS) <= 0:
        return None
    from pconv_jax.weights import vgg16_files  # the loader; imported here so that VGG-free runs skip it
    return vgg16_files.load_vgg16(config.loss.vgg_weights)


def eval_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The fixed held-out batch: the first eval_batch_size held-out images with seeded masks."""
    from pconv_jax.data import pipeline as data
    count = int(config.train.eval_batch_size)
    images = np.asarray(data.load_eval_images(config, count), np.float32)
    size = images.shape[1:3]
    masks = np.stack([generate_mask((config.seed, 10_000 + i), size,
                                    hole_ratio_range=(config.masks.hole_ratio_min,
                                                      config.masks.hole_ratio_max))
                      for i in range(count)])
    return {"image": images, "mask": masks}


# ----------------------------------------------------------------------------- the loop

def prepare_workdir(workdir: str) -> str:
    """Creates the workdir; a clear error if it cannot be written."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write to the workdir {workdir!r} ({e.strerror}); pass a writable "
                      f"--workdir") from e
    return workdir


def check_dataset(config: ml_collections.ConfigDict) -> None:
    """A clear error, before any compilation, for a TFDS dataset that is absent and may not be
    downloaded."""
    from pconv_jax.data import sources
    name = config.data.name
    if name not in sources.TFDS_NAMES or config.data.download:
        return
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=config.data.tfds_data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name} is not prepared in {builder.data_dir!r}: set "
            f"config.data.download=True to let TFDS download it (CelebA-HQ needs a manual "
            f"download, see docs), or point config.data.tfds_data_dir at a prepared copy.")


def _restore_or_init(config, checkpointer, tx, mesh, pipeline):
    """(graphdef, state): own checkpoint -> config.train.init_from -> fresh init."""
    graphdef, state = create_train_state(config, tx, mesh)
    replicated = parallel.replicated(mesh)
    abstract_model = checkpointing.abstract_like(state.model_item(), replicated)
    if checkpointer.latest_step() is not None:
        abstract_train = checkpointing.abstract_like(state.train_item(), replicated)
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
        init_dir = checkpointing.checkpoint_dir(config.train.init_from)
        if not os.path.isdir(init_dir):
            raise FileNotFoundError(
                f"config.train.init_from = {config.train.init_from!r} holds no checkpoints "
                f"({init_dir}): run the train stage first, or point init_from at its workdir")
        source = checkpointing.Checkpointer(init_dir, save_every_steps=1, keep=1,
                                            asynchronous=False, read_only=True)
        try:
            model, step = source.restore_model(abstract_model)
        finally:
            source.close()
        state = state.replace(params=model["params"], batch_stats=model["batch_stats"],
                              opt_state=parallel.replicate(tx.init(model["params"]), mesh))
        logging.info("initialised the network from %s (step %d)", init_dir, step)
    return graphdef, state


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


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


def _last_checkpoint_text(checkpointer: checkpointing.Checkpointer) -> str:
    last = checkpointer.latest_step()
    if last is None:
        return "No checkpoint was saved yet"
    return f"The last good checkpoint is step {last} in {checkpointer.directory}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or fine-tunes) per `config`, checkpointing and logging into `workdir`.

    Returns the final TrainState. Raises FloatingPointError when the loss is not finite (the
    last checkpoint stays the last good one).
    """
    from pconv_jax.data import pipeline as data  # TensorFlow: imported when training, not with the module

    # --- Setup: workdir, mesh, writers, optimizer, frozen VGG, data, checkpoints.
    workdir = prepare_workdir(workdir)
    check_dataset(config)
    mesh = parallel.make_data_mesh()
    parallel.check_batch_size(config.data.batch_size, mesh)
    _write_config(config, workdir)
    writer = logs.create_writer(workdir)
    tx = make_optimizer(config)
    vgg = load_vgg(config)
    vgg = None if vgg is None else parallel.replicate(vgg, mesh)
    pipeline = data.create_train_pipeline(config, seed=config.seed)
    checkpointer = checkpointing.Checkpointer(
        checkpointing.checkpoint_dir(workdir), save_every_steps=config.train.checkpoint_every_steps,
        keep=config.train.keep_checkpoints, asynchronous=config.train.async_checkpoints)
    checkpointer.install_signal_handler()
    try:
        # --- State: own checkpoint -> config.train.init_from -> fresh initialisation.
        graphdef, state = _restore_or_init(config, checkpointer, tx, mesh, pipeline)
        train_step, eval_step = steps_for(graphdef, config)
        held_out = eval_batch(config)
        held_out_global = {k: jax.make_array_from_process_local_data(parallel.replicated(mesh), v)
                           for k, v in held_out.items()}
        num_steps = int(config.train.num_steps)
        first_step = int(jax.device_get(state.step)) + 1
        if first_step > num_steps:
            logging.info("nothing to do: the checkpoint is at step %d >= num_steps %d",
                         first_step - 1, num_steps)
        report_progress = logs.progress_reporter(num_steps)
        throughput = logs.Throughput(config.data.batch_size)
        throughput.measure(first_step - 1)
        window = MetricsWindow(first_step)
        data_wait = logs.DataWait(data.resolve_workers(config.data.workers))

        # --- The loop.
        with jax.set_mesh(mesh):
            for step in range(first_step, num_steps + 1):
                batch = parallel.global_batch(data_wait.next(pipeline), mesh)  # uint8
                state, metrics = train_step(state, batch, vgg)
                window.add(metrics)
                report_progress(step)
                last = step == num_steps
                stop = checkpointer.should_stop(step)
                save = last or stop or checkpointer.should_save(step)
                if save or step % config.train.log_every_steps == 0:
                    # Also the non-finite check, so that a NaN state is never saved.
                    summary = window.flush(step, _last_checkpoint_text(checkpointer))
                    summary.update(data_wait.measure(step))
                    summary.update(throughput.measure(step),
                                   learning_rate=float(config.train.learning_rate))
                    writer.write_scalars(step, summary)
                if last or step % config.train.eval_every_steps == 0:
                    evaluate(eval_step, state, held_out, held_out_global, writer, step)
                if save:
                    checkpointer.save(step, model=state.model_item(), train=state.train_item(),
                                      data_state=pipeline.get_state(), force=last or stop)
                if stop:
                    logging.warning("preemption: saved step %d, stopping", step)
                    break
        writer.flush()
        return state
    finally:
        checkpointer.wait()
        checkpointer.close()


def evaluate(eval_step, state, held_out, held_out_global, writer, step: int) -> dict[str, float]:
    """L1 / PSNR on the fixed held-out batch and its image grid, written at `step`."""
    metrics, output, comp = eval_step(state, held_out_global)
    metrics = {f"eval_{k}": float(v) for k, v in jax.device_get(metrics).items()}
    writer.write_scalars(step, metrics)
    grid = logs.image_grid(held_out["image"], held_out["mask"],
                                    np.asarray(jax.device_get(output)), np.asarray(jax.device_get(comp)))
    writer.write_images(step, {"held_out": grid[None]})
    return metrics
