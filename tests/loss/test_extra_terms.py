"""Extra loss terms: in the train step's gradient, its metrics, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pconv_jax.loss import losses
from pconv_jax.network.vgg16 import random_vgg16, vgg16_features
from pconv_jax.training import mesh as mesh_lib
from pconv_jax.training.step import create_train_state, make_train_step
from tests.helpers.training import demo_config, random_batch

L2_WEIGHT = 50.0  # its gradient comparable to the paper's terms'

# An "optimizer" that leaves the parameters alone and keeps the step's gradient as its state.
RECORD_GRADIENT = optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def l2(x: losses.LossInputs) -> jax.Array:
    return jnp.mean((x.output - x.target) ** 2)


@pytest.mark.slow
def test_an_extra_l2_term_adds_exactly_its_gradient_and_is_reported():
    config = demo_config(size=16)
    config.loss.weights.update(perceptual=0.05, style_out=120.0, style_comp=120.0)  # all terms
    mesh = mesh_lib.make_data_mesh()
    vgg = mesh_lib.replicate(random_vgg16(jax.random.key(1)), mesh)
    local = random_batch(n=8, size=16)
    weights = dict(config.loss.weights)

    # The reference: the L2 term's gradient by hand, d/dθ mean((out - gt)^2) = vjp of
    # 2 (out - gt) / size through the network (BatchNorm in training mode, as in the step).
    graphdef, state = create_train_state(config, RECORD_GRADIENT, mesh)
    # Off the mesh: plain single-device arrays.
    params, batch_stats = jax.tree.map(jnp.asarray, jax.device_get((state.params,
                                                                    state.batch_stats)))
    image, mask = local["image"], local["mask"]

    def forward(params):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        model.train()
        return model(image * mask, mask)

    output, vjp = jax.vjp(forward, params)
    (want,) = vjp(L2_WEIGHT * 2.0 * (output - image) / output.size)

    def run(extra_terms):
        _, state = create_train_state(config, RECORD_GRADIENT, mesh)
        step = make_train_step(graphdef, RECORD_GRADIENT, weights, False, extra_terms=extra_terms)
        with jax.set_mesh(mesh):
            new_state, metrics = step(state, mesh_lib.global_batch(local, mesh), vgg)
        return new_state.opt_state, jax.device_get(metrics)

    grads, metrics = run(None)
    grads_l2, metrics_l2 = run({"l2": (L2_WEIGHT, l2)})

    got = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), grads_l2, grads)
    # Up to the float32 rounding of the two gradients subtracted (~30 ulps of the largest).
    tol = 4e-6 * max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(grads_l2))
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(want)) > 100 * tol
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=tol),
                 got, jax.tree.map(np.asarray, want))
    # Every term is reported, the extra one with its unweighted value; the total includes it.
    assert set(metrics_l2) == set(metrics) | {"loss_l2"}
    value = float(jnp.mean((output - image) ** 2))
    np.testing.assert_allclose(metrics_l2["loss_l2"], value, rtol=1e-5)
    np.testing.assert_allclose(metrics_l2["loss"], metrics["loss"] + L2_WEIGHT * value, rtol=1e-5)
    for name in losses.TERMS:
        np.testing.assert_allclose(metrics_l2[f"loss_{name}"], metrics[f"loss_{name}"],
                                   rtol=1e-6, err_msg=name)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    out, gt = rng.random((2, 16, 16, 3), np.float32), rng.random((2, 16, 16, 3), np.float32)
    mask = np.ones((2, 16, 16, 1), np.float32)
    mask[:, 4:10, 3:12] = 0
    return out, gt, mask


NO_VGG = {"perceptual": 0.0, "style_out": 0.0, "style_comp": 0.0}


def test_extra_terms_read_the_composite_and_vgg_features_once_on_request(monkeypatch):
    out, gt, mask = inputs()
    vgg = random_vgg16(jax.random.key(0))
    passes, seen = [], {}
    monkeypatch.setattr(losses, "vgg16_features",
                        lambda params, images: passes.append(1) or vgg16_features(params, images))

    def pool1_l1(x):
        seen["composite"] = x.composite
        return jnp.mean(jnp.abs(x.features.composite[0] - x.features.target[0]))

    base, _ = losses.inpainting_loss(out, gt, mask, weights=NO_VGG)
    assert not passes
    total, terms = losses.inpainting_loss(out, gt, mask, vgg, NO_VGG,
                                          extra_terms={"pool1": (2.0, pool1_l1)})
    assert len(passes) == 3  # output, composite, ground truth: on request
    np.testing.assert_array_equal(seen["composite"], mask * gt + (1 - mask) * out)
    want = jnp.mean(jnp.abs(vgg16_features(vgg, seen["composite"])[0]
                            - vgg16_features(vgg, gt)[0]))
    np.testing.assert_allclose(float(terms["pool1"]), float(want), rtol=1e-6)
    assert float(terms["perceptual"]) == 0.0  # its weight is 0: not computed
    np.testing.assert_allclose(float(total), float(base) + 2.0 * float(want), rtol=1e-6)
    # With the paper's VGG terms on, they and the extra term share the same three passes.
    passes.clear()
    _, terms = losses.inpainting_loss(out, gt, mask, vgg, extra_terms={"pool1": (2.0, pool1_l1)})
    assert len(passes) == 3 and float(terms["perceptual"]) > 0


@pytest.mark.parametrize("extra,message", [
    ({"hole": (1.0, l2)}, r"'hole': the name must be an identifier other than the paper's"),
    ({"my term": (1.0, l2)}, r"'my term': the name must be an identifier"),
    ({"l2": l2}, r"'l2': give \(weight, function of LossInputs\)"),
    ({"l2": (1.0, "l2")}, r"'l2': give \(weight, function of LossInputs\)"),
    ({"l2": ("heavy", l2)}, r"could not convert string to float"),
    ({"per_pixel": (1.0, lambda x: x.output - x.target)},
     r"'per_pixel' must return a scalar; got shape \(2, 16, 16, 3\)"),
    ({"pool1": (1.0, lambda x: jnp.mean(x.features.output[0]))},
     r"reads VGG16 features but no VGG16 weights were given.*config\.loss\.vgg_weights"),
])
def test_bad_extra_terms_are_clear_errors(extra, message):
    out, gt, mask = inputs()
    with pytest.raises(ValueError, match=message):
        losses.inpainting_loss(out, gt, mask, weights=NO_VGG, extra_terms=extra)


def test_bad_extra_terms_fail_when_the_step_is_built():
    config = demo_config(size=16)
    graphdef, _ = create_train_state(config, RECORD_GRADIENT, mesh_lib.make_data_mesh())
    with pytest.raises(ValueError, match="'valid': the name must be"):
        make_train_step(graphdef, RECORD_GRADIENT, dict(config.loss.weights), False,
                        extra_terms={"valid": (1.0, l2)})
