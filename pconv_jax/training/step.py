"""The train and eval steps: a `TrainState`, the optimizer, and the jitted steps.

One `jax.jit` step over a 1-D mesh of all devices ('data'): parameters replicated, the batch
sharded, so BatchNorm statistics are global over the whole batch and gradients come back summed.

The learning rate is a function of `state.step` (`learning_rate_schedule`), applied in the step
to the optimizer's unit-rate update, and gradient clipping happens in the step too: the optimizer
state is the same for every schedule and clipping setting, so a run resumes from any checkpoint
(older ones included) when they change. One step is one update; with
`train.accumulation_steps = k` it runs the batch as k micro-batches (`make_train_step`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pconv_jax import config as config_lib
from pconv_jax.evaluation import metrics as image_metrics
from pconv_jax.loss import losses
from pconv_jax.network.unet import PConvUNet, composite, encoder_batchnorm_filter
from pconv_jax.training.mesh import replicate


@flax.struct.dataclass
class TrainState:
    """Everything a train step changes. `params`/`batch_stats` are the network's nnx.State."""
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def model_item(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def train_item(self) -> dict[str, Any]:
        return {"opt_state": self.opt_state, "step": self.step}


# ----------------------------------------------------------------------------- construction

def _param_labels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, v: "frozen" if encoder_batchnorm_filter(path, v) else "trained", params)


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of `config.train`, built once per run for state creation and the step alike.

    Adam at unit learning rate: the step multiplies its update by `learning_rate_schedule(train)`
    of the step (bitwise what `optax.adam(lr)` gives, with the same state). With
    `freeze_encoder_bn` the encoder's BatchNorm scale and bias get zero updates and no Adam state
    (optax.multi_transform).
    """
    adam = optax.adam(1.0, b1=float(train.adam_b1), b2=float(train.adam_b2))
    if not train.freeze_encoder_bn:
        return adam
    return optax.multi_transform({"trained": adam, "frozen": optax.set_to_zero()}, _param_labels)


LR_SCHEDULES = ("constant", "cosine", "step")


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate of update t (t = 0, 1, ...: `state.step` before the update).

    Linear warmup from 0 over `warmup_steps` updates, then `lr_schedule`: 'constant'
    (`learning_rate`; the paper's stages), 'cosine' (from `learning_rate` to 0 at update
    `lr_decay_steps`, 0 = `num_steps`; optax.warmup_cosine_decay_schedule) or 'step' (times
    `lr_step_factor` at updates `lr_step_every`, 2 `lr_step_every`, ...). Every count is in
    updates from the start of the run, warmup included.
    """
    if train.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"config.train.lr_schedule must be one of {LR_SCHEDULES}, "
                         f"got {train.lr_schedule!r}")
    config_lib.check_schedule(train)
    lr, warmup = float(train.learning_rate), int(train.warmup_steps)
    if train.lr_schedule == "cosine":
        end = int(train.lr_decay_steps) or int(train.num_steps)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, end)
    if train.lr_schedule == "step":
        after = optax.exponential_decay(lr, int(train.lr_step_every),
                                        float(train.lr_step_factor), staircase=True)
    else:
        after = optax.constant_schedule(lr)
    if warmup == 0:
        return after
    ramp = optax.linear_schedule(0.0, lr, warmup)
    return lambda count: jnp.where(count < warmup, ramp(count), after(count))


def create_model(config: ml_collections.ConfigDict) -> PConvUNet:
    """The config's network, initialised from `config.seed`."""
    return PConvUNet.from_config(config.model, rngs=nnx.Rngs(config.seed))


def create_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, fresh TrainState replicated on the mesh)."""
    model = create_model(config)
    model.freeze_encoder_bn = bool(config.train.freeze_encoder_bn)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params))
    return graphdef, replicate(state, mesh)


# ----------------------------------------------------------------------------- steps

def model_inputs(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(image float32 in [0, 1], mask float32 1 = valid) from a batch; the pipelines send uint8
    (a quarter of the bytes to the device), float batches pass unchanged."""
    image, mask = batch["image"], batch["mask"]
    if image.dtype == jnp.uint8:
        image = image.astype(jnp.float32) / 255.0
    return image, mask.astype(jnp.float32)


def _forward(graphdef: nnx.GraphDef, *, train: bool, freeze_encoder_bn: bool) -> Callable:
    """(params, batch_stats, image, mask) -> (output, new batch_stats).

    Under the explicit mesh the output keeps the batch's sharding and the BatchNorm statistics
    (means over the batch axis) come back replicated.
    """
    def forward(params, batch_stats, image, mask):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        model.train() if train else model.eval()
        model.freeze_encoder_bn = freeze_encoder_bn
        output = model(image * mask, mask)
        return output, nnx.state(model, nnx.BatchStat)
    return forward


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    loss_weights: dict[str, float], freeze_encoder_bn: bool, *,
                    extra_terms: dict[str, tuple[float, losses.TermFn]] | None = None,
                    learning_rate: optax.ScalarOrSchedule = 1.0, grad_clip_norm: float = 0.0,
                    accumulation_steps: int = 1, loss_dtype: str | None = None,
                    loss_remat: bool = False) -> Callable:
    """A jitted `(state, batch, vgg) -> (state, metrics)`; the state is donated.

    The loss is the paper's with `loss_weights`, plus `extra_terms` {name: (weight, fn)}: each
    `fn(losses.LossInputs)` returns a scalar (see `losses.inpainting_loss`); `loss_dtype` and
    `loss_remat` are the VGG16's (`losses.inpainting_loss`). The metrics hold `loss` (the total),
    `grad_norm` (before clipping) and `loss_<name>` of every term, extra ones included.

    One update: the gradients, clipped to global norm `grad_clip_norm` (0 = off; the encoder's
    frozen BatchNorm parameters do not count), go through `tx`, whose update is multiplied by
    `learning_rate` (a number or a schedule of `state.step`; 1 leaves `tx`'s update as it is).

    `accumulation_steps` k > 1 runs the batch as k micro-batches, one after the other
    (`jax.lax.scan`: one micro-batch's activations in memory at a time). Micro-batch i holds
    images i, i + k, i + 2k, ... of the global batch, so every device keeps its share of each
    one (nothing moves between devices). Each goes through the network with its own BatchNorm
    batch statistics; gradients, metrics and the new running statistics are their means. The
    running mean is then the k-times-larger batch's; the running variance is the mean of the
    micro-batches' variances (the statistics the network normalised with). Each device's share
    of the batch must be a multiple of k.
    """
    weights = {k: float(v) for k, v in loss_weights.items()}
    extra = losses.check_extra_terms(extra_terms)  # bad entries fail here, not in the trace
    forward = _forward(graphdef, train=True, freeze_encoder_bn=freeze_encoder_bn)
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    clip = optax.clip_by_global_norm(float(grad_clip_norm)) if grad_clip_norm else None
    parts_count = int(accumulation_steps)
    if parts_count < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps!r}")

    def loss_fn(params, batch_stats, batch, vgg):
        image, mask = model_inputs(batch)
        output, new_batch_stats = forward(params, batch_stats, image, mask)
        total, terms = losses.inpainting_loss(output, image, mask, vgg, weights, extra,
                                              vgg_dtype=loss_dtype, vgg_remat=loss_remat)
        return total, (terms, new_batch_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, batch_stats, batch, vgg):
        """(loss, terms, new batch_stats, grads) of the batch, as k micro-batches."""
        if parts_count == 1:
            (loss, (terms, new_stats)), grads = grad_fn(params, batch_stats, batch, vgg)
            return loss, terms, new_stats, grads

        def micro_step(carry, micro_batch):
            (loss, (terms, new_stats)), grads = grad_fn(params, batch_stats, micro_batch, vgg)
            # Statistics as changes: a frozen BatchNorm's stay bitwise unchanged.
            change = jax.tree.map(jnp.subtract, new_stats, batch_stats)
            return jax.tree.map(jnp.add, carry, (loss, terms, change, grads)), None

        parts = micro_batches(batch, parts_count)
        first = jax.tree.map(lambda x: x[0], parts)
        (loss, (terms, _)), grads = jax.eval_shape(grad_fn, params, batch_stats, first, vgg)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             (loss, terms, batch_stats, grads))
        sums, _ = jax.lax.scan(micro_step, zeros, parts)
        loss, terms, change, grads = jax.tree.map(lambda x: x / parts_count, sums)
        return loss, terms, jax.tree.map(jnp.add, batch_stats, change), grads

    def train_step(state: TrainState, batch: dict[str, jax.Array], vgg):
        loss, terms, batch_stats, grads = gradients(state.params, state.batch_stats, batch, vgg)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   **{f"loss_{k}": v for k, v in terms.items()}}
        if clip is not None:
            grads = clip.update(_without_frozen(grads, freeze_encoder_bn), clip.init(grads))[0]
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = schedule(state.step)
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=0)


def micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """The batch as (k, N / k, ...) arrays: micro-batch i holds images i, i + k, ... ."""
    def split(x):
        n = x.shape[0]
        if n % k:
            raise ValueError(f"a batch of {n} images does not split into {k} micro-batches "
                             f"(train.accumulation_steps)")
        return jnp.moveaxis(x.reshape((n // k, k) + x.shape[1:]), 1, 0)
    return jax.tree.map(split, batch)


def _without_frozen(grads: Any, freeze_encoder_bn: bool) -> Any:
    """The gradients with the frozen encoder BatchNorm parameters' set to 0 (they get no
    update, so they must not count in the clipping norm)."""
    if not freeze_encoder_bn:
        return grads
    return jax.tree_util.tree_map_with_path(
        lambda path, g: jnp.zeros_like(g) if encoder_batchnorm_filter(path, g) else g, grads)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The optimizer and the jitted steps of one run (they share `tx`)."""
    tx: optax.GradientTransformation
    train: Callable
    eval: Callable


def make_steps(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, *,
               extra_terms: dict[str, tuple[float, losses.TermFn]] | None = None) -> Steps:
    """Builds the optimizer once and the train and eval steps around it.

    `extra_terms` {name: (weight, fn)} adds terms to the paper's loss (`make_train_step`);
    pass the result to `train_and_evaluate(config, workdir, steps=...)`.
    """
    train = config.train
    tx = make_optimizer(train)
    train_step = make_train_step(
        graphdef, tx, dict(config.loss.weights), bool(train.freeze_encoder_bn),
        extra_terms=extra_terms, learning_rate=learning_rate_schedule(train),
        grad_clip_norm=float(train.grad_clip_norm),
        accumulation_steps=int(train.accumulation_steps), loss_dtype=config.loss.dtype,
        loss_remat=bool(config.loss.remat))
    return Steps(tx, train_step, make_eval_step(graphdef))


def network_graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The graph definition of the config's network, without allocating its parameters."""
    model = nnx.eval_shape(lambda: create_model(config))
    model.freeze_encoder_bn = bool(config.train.freeze_encoder_bn)
    return nnx.split(model, nnx.Param, nnx.BatchStat)[0]


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
    """A jitted `(state, batch) -> (metrics, output, composite)` in inference mode."""
    # The held-out batch is replicated (every process holds all of it).
    forward = _forward(graphdef, train=False, freeze_encoder_bn=False)

    def eval_step(state: TrainState, batch):
        output, _ = forward(state.params, state.batch_stats, batch["image"], batch["mask"])
        comp = jnp.clip(composite(output, batch["image"], batch["mask"]), 0.0, 1.0)
        metrics = {"l1_percent": jnp.mean(image_metrics.l1_percent(comp, batch["image"])),
                   "psnr": jnp.mean(image_metrics.psnr(comp, batch["image"]))}
        return metrics, output, comp

    return jax.jit(eval_step)
