"""The train and eval steps: a `TrainState`, the optimizer, and the jitted steps.

One `jax.jit` step over a 1-D mesh of all devices ('data'): parameters replicated, the batch
sharded, so BatchNorm statistics are global over the whole batch and gradients come back summed.
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

    Adam at `learning_rate`; with `freeze_encoder_bn` the encoder's BatchNorm scale and bias get
    zero updates and no Adam state (optax.multi_transform).
    """
    adam = optax.adam(float(train.learning_rate), b1=float(train.adam_b1), b2=float(train.adam_b2))
    if not train.freeze_encoder_bn:
        return adam
    return optax.multi_transform({"trained": adam, "frozen": optax.set_to_zero()}, _param_labels)


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
                    extra_terms: dict[str, tuple[float, losses.TermFn]] | None = None
                    ) -> Callable:
    """A jitted `(state, batch, vgg) -> (state, metrics)`; the state is donated.

    The loss is the paper's with `loss_weights`, plus `extra_terms` {name: (weight, fn)}: each
    `fn(losses.LossInputs)` returns a scalar (see `losses.inpainting_loss`). The metrics hold
    `loss` (the total), `grad_norm` and `loss_<name>` of every term, extra ones included.
    """
    weights = {k: float(v) for k, v in loss_weights.items()}
    extra = losses.check_extra_terms(extra_terms)  # bad entries fail here, not in the trace
    forward = _forward(graphdef, train=True, freeze_encoder_bn=freeze_encoder_bn)

    def loss_fn(params, batch_stats, batch, vgg):
        image, mask = model_inputs(batch)
        output, new_batch_stats = forward(params, batch_stats, image, mask)
        total, terms = losses.inpainting_loss(output, image, mask, vgg, weights, extra)
        return total, (terms, new_batch_stats)

    def train_step(state: TrainState, batch: dict[str, jax.Array], vgg):
        (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch, vgg)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   **{f"loss_{k}": v for k, v in terms.items()}}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=0)


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
    tx = make_optimizer(config.train)
    freeze = bool(config.train.freeze_encoder_bn)
    return Steps(tx, make_train_step(graphdef, tx, dict(config.loss.weights), freeze,
                                     extra_terms=extra_terms),
                 make_eval_step(graphdef))


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
