"""The large-batch recipe of `pconv_jax.training.step`: the learning-rate schedule, gradient
clipping and gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pconv_jax import config as config_lib
from pconv_jax.training import mesh
from pconv_jax.training import step as step_lib
from pconv_jax.training.step import create_train_state, make_train_step
from tests.helpers.steps import assert_close, sgd_step, tiny_config
from tests.helpers.training import default_config, param_leaves, random_batch


def global_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(v)) for v in tree.values())))


# ----------------------------------------------------------------------------- schedule

def schedule_config(**train):
    config = default_config()
    config.train.update(learning_rate=1e-3, num_steps=100, **train)
    config_lib.validate(config)
    return step_lib.learning_rate_schedule(config.train)


def test_schedule_values():
    values = lambda schedule, steps: [float(schedule(t)) for t in steps]  # noqa: E731
    assert values(schedule_config(), [0, 50, 99]) == [1e-3] * 3  # the paper's: constant
    np.testing.assert_allclose(values(schedule_config(warmup_steps=10), [0, 5, 10, 99]),
                               [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    # Cosine from the end of warmup to 0 at num_steps (lr_decay_steps = 0), or lr_decay_steps.
    np.testing.assert_allclose(
        values(schedule_config(lr_schedule="cosine", warmup_steps=10), [5, 10, 55, 100, 120]),
        [5e-4, 1e-3, 5e-4, 0.0, 0.0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        values(schedule_config(lr_schedule="cosine", lr_decay_steps=50), [0, 25, 50]),
        [1e-3, 5e-4, 0.0], rtol=1e-6, atol=1e-12)
    # Step: x0.5 at updates 30, 60, 90 (counted from the start, warmup included).
    np.testing.assert_allclose(
        values(schedule_config(lr_schedule="step", lr_step_every=30, lr_step_factor=0.5,
                               warmup_steps=10), [5, 29, 30, 59, 60, 95]),
        [5e-4, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4], rtol=1e-6)


@pytest.mark.parametrize(("train", "message"), [
    (dict(lr_schedule="linear"), r"config.train.lr_schedule must be one of 'constant', 'cosine'"),
    (dict(lr_schedule="cosine", warmup_steps=100),
     r"'cosine' decays until update 100 \(lr_decay_steps, 0 = num_steps\), which must exceed "
     r"config.train.warmup_steps = 100"),
    (dict(lr_schedule="step"), r"'step' needs config.train.lr_step_every >= 1"),
    (dict(lr_step_factor=0.0), r"config.train.lr_step_factor must be a number in \(0, 1\]"),
    (dict(grad_clip_norm=-1.0), r"config.train.grad_clip_norm must be a number >= 0"),
    (dict(accumulation_steps=0), r"config.train.accumulation_steps must be an integer >= 1"),
    (dict(accumulation_steps=3), r"config.data.batch_size = 8 must be a multiple of "
                                 r"config.train.accumulation_steps \(3\) x the device count \(1\)"),
])
def test_bad_recipe_settings_are_one_line_errors(train, message):
    config = default_config()
    config.train.update(num_steps=100, **train)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_schedule_choices_agree_with_the_step():
    assert set(config_lib.CHOICES["train.lr_schedule"]) == set(step_lib.LR_SCHEDULES)


@pytest.mark.slow
def test_constant_schedule_is_bitwise_optax_adam():
    """The default: Adam at unit rate times the learning rate is `optax.adam(lr)`, state too."""
    config = tiny_config()
    data_mesh = mesh.make_data_mesh(jax.devices()[:1])
    batch = mesh.global_batch(random_batch(2), data_mesh)
    results = []
    for tx, lr in ((step_lib.make_optimizer(config.train), 2e-4), (optax.adam(2e-4), 1.0)):
        graphdef, state = create_train_state(config, tx, data_mesh)
        step = make_train_step(graphdef, tx, dict(config.loss.weights), False, learning_rate=lr)
        with jax.set_mesh(data_mesh):
            for _ in range(2):
                state, _ = step(state, batch, None)
        results.append(jax.device_get((state.params, state.opt_state)))
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), *results)
    assert all(jax.tree.leaves(chex_equal))


def test_warmup_from_zero_leaves_the_first_update_out():
    config = tiny_config()
    config.train.update(warmup_steps=2)
    data_mesh = mesh.make_data_mesh(jax.devices()[:1])
    steps = step_lib.make_steps(config, step_lib.network_graphdef(config))
    _, state = create_train_state(config, steps.tx, data_mesh)
    batch = mesh.global_batch(random_batch(2), data_mesh)
    start = param_leaves(state.params)
    with jax.set_mesh(data_mesh):
        state, _ = steps.train(state, batch, None)
        first = param_leaves(state.params)
        state, _ = steps.train(state, batch, None)
    assert all(np.array_equal(start[k], first[k]) for k in start)  # lr(0) = 0
    assert not all(np.array_equal(first[k], v) for k, v in param_leaves(state.params).items())


# ----------------------------------------------------------------------------- clipping

@pytest.mark.slow
def test_clipping_bounds_the_gradient_the_optimizer_receives():
    batch = random_batch(2)
    metrics, _, _, grads = sgd_step(batch, jax.devices()[:1])
    norm = global_norm(grads)
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    clipped_metrics, _, _, clipped = sgd_step(batch, jax.devices()[:1], grad_clip_norm=norm / 4)
    np.testing.assert_allclose(global_norm(clipped), norm / 4, rtol=1e-4)
    assert clipped_metrics["grad_norm"] == metrics["grad_norm"]  # logged before clipping
    for key in grads:  # the same direction, a quarter of the length
        np.testing.assert_allclose(clipped[key], grads[key] / 4, rtol=0,
                                   atol=1e-5 * np.max(np.abs(grads[key])) + 1e-9)
    _, _, _, unclipped = sgd_step(batch, jax.devices()[:1], grad_clip_norm=norm * 2)
    assert_close(unclipped, grads, 1e-6)  # under the bound: as they are


def test_clipping_leaves_the_frozen_encoder_batchnorm_out():
    grads = {"encoder": {"1": {"bn": {"scale": jnp.full((3,), 100.0)}}},
             "decoder": {"0": {"conv": {"kernel": jnp.full((4,), 1.0)}}}}
    kept = step_lib._without_frozen(grads, True)
    assert float(optax.tree.norm(kept)) == 2.0
    assert step_lib._without_frozen(grads, False) is grads


# ----------------------------------------------------------------------------- accumulation

@pytest.mark.slow
@pytest.mark.multidevice
def test_accumulation_is_the_mean_of_its_micro_batches_on_eight_devices():
    """k = 2 micro-batches on 8 devices: gradients, metrics and running statistics are the
    means of two separate steps on images 0, 2, 4, ... and 1, 3, 5, ... (each micro-batch has
    its own BatchNorm statistics, as the step documents)."""
    batch = random_batch(16)
    metrics, _, stats, grads = sgd_step(batch, jax.devices(), accumulation_steps=2)
    parts = [sgd_step({k: v[i::2] for k, v in batch.items()}, jax.devices()[:1])
             for i in range(2)]
    mean = lambda i: {k: (parts[0][i][k] + parts[1][i][k]) / 2 for k in parts[0][i]}  # noqa: E731
    norm = metrics.pop("grad_norm")  # of the mean gradient, not a mean of norms
    assert_close(metrics, {k: v for k, v in mean(0).items() if k != "grad_norm"}, 1e-5)
    assert_close(grads, mean(3), 1e-5)
    np.testing.assert_allclose(norm, global_norm(grads), rtol=1e-5)
    assert_close(stats, mean(2), 1e-5)


@pytest.mark.slow
def test_accumulation_equals_the_larger_batch_when_batchnorm_sees_the_same_statistics():
    """Each image twice (the larger batch's BatchNorm mean and variance are then those of either
    micro-batch): two accumulated micro-batches give the one step on the doubled batch."""
    batch = {k: np.repeat(v, 2, axis=0) for k, v in random_batch(4).items()}
    devices = jax.devices()[:2]
    one = sgd_step(batch, devices)
    accumulated = sgd_step(batch, devices, accumulation_steps=2)
    for got, want in zip(accumulated, one):
        assert_close(got, want, 1e-5)


@pytest.mark.multidevice
def test_accumulated_step_all_reduces_only_gradients_and_statistics():
    """The micro-batch split keeps every device's images on it: no collective moves
    activations. The all-reduces sit in the loop over micro-batches (XLA does not move them out
    on CPU): gradients and BatchNorm statistics once per micro-batch, as documented."""
    from pconv_jax.testing import collectives
    from tests.training.test_compiled_step import MOVES_ACTIVATIONS, tree_bytes
    config = tiny_config()
    data_mesh = mesh.make_data_mesh()
    tx = optax.adam(1e-3)
    graphdef, state = create_train_state(config, tx, data_mesh)
    step = make_train_step(graphdef, tx, dict(config.loss.weights), False, accumulation_steps=2)
    with jax.set_mesh(data_mesh):
        hlo = step.lower(state, mesh.global_batch(random_batch(16), data_mesh), None
                         ).compile().as_text()
    found = collectives.collectives(hlo)
    assert not [c for c in found if c.op in MOVES_ACTIVATIONS]
    reduced = sum(c.bytes for c in found if c.op == "all-reduce")
    params, stats = tree_bytes(state.params), tree_bytes(state.batch_stats)
    assert params <= reduced <= 1.1 * (params + stats), (reduced, params, stats)


def test_accumulation_keeps_frozen_encoder_statistics_bitwise():
    config = tiny_config()
    config.train.freeze_encoder_bn = True
    data_mesh = mesh.make_data_mesh(jax.devices()[:1])
    tx = step_lib.make_optimizer(config.train)
    graphdef, state = create_train_state(config, tx, data_mesh)
    before = param_leaves(state.batch_stats)
    step = make_train_step(graphdef, tx, dict(config.loss.weights), True, learning_rate=1e-3,
                           accumulation_steps=2)
    with jax.set_mesh(data_mesh):
        state, _ = step(state, mesh.global_batch(random_batch(4), data_mesh), None)
    after = param_leaves(state.batch_stats)
    encoder = [k for k in before if k.startswith("encoder/")]
    assert encoder and all(np.array_equal(after[k], before[k]) for k in encoder)
    assert not all(np.array_equal(after[k], before[k]) for k in before if k not in encoder)
