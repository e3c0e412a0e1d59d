"""One training step of the tiny network on a mesh, with the gradients read back (tests of the
step and of its sharding)."""

from __future__ import annotations

import jax
import numpy as np
import optax

from pconv_jax.loss import losses
from pconv_jax.training import mesh
from pconv_jax.training.step import create_train_state, make_train_step
from tests.helpers.training import default_config, param_leaves


def tiny_config():
    """The tiny network, the loss without VGG terms."""
    config = default_config()
    config.model.update(depth=3, base_width=4, max_width=8)
    for term in losses.VGG_TERMS:
        config.loss.weights[term] = 0.0
    return config


def sgd_step(batch, devices=None, **options):
    """(metrics, params, batch_stats, grads) after one SGD(lr=1) step on a mesh of `devices`
    (default: all): new = old - grads, so the gradients the optimizer received can be read
    back. `options` go to `make_train_step`."""
    config = tiny_config()
    data_mesh = mesh.make_data_mesh(devices)
    tx = optax.sgd(1.0)
    graphdef, state = create_train_state(config, tx, data_mesh)
    before = param_leaves(state.params)
    step = make_train_step(graphdef, tx, dict(config.loss.weights), False, **options)
    with jax.set_mesh(data_mesh):
        state, metrics = step(state, mesh.global_batch(batch, data_mesh), None)
    after = param_leaves(state.params)
    grads = {k: before[k] - after[k] for k in before}
    return jax.device_get(metrics), after, param_leaves(state.batch_stats), grads


def assert_close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = max(np.max(np.abs(b[key])), 1e-6)
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=rtol * scale, err_msg=key)
