"""pconv_jax.functional: the network as a pure function of plain pytrees."""


import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pconv_jax import PConvUNet, functional


def _model(seed=0):
    return PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(seed))


def _batch(n=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.uniform(size=(n, size, size, 3)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(n, size, size, 1)) > 0.3, jnp.float32)
    return image, mask


def _leaves_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _train_a_little(model):
    """Moves the BatchNorm statistics away from their initial values (so that they count)."""
    image, mask = _batch(4, seed=9)
    model.train()
    model(image, mask)
    model.eval()


def test_params_and_state_are_plain_nested_dicts_with_string_keys():
    _, params, state = functional.split(_model())
    for tree in (params, state):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            assert all(type(entry) is jax.tree_util.DictKey and type(entry.key) is str
                       for entry in path), path
            assert isinstance(leaf, jax.Array)
    assert set(functional.flatten(params)) >= {"encoder/0/conv/kernel", "decoder/1/conv/bias"}
    assert set(functional.flatten(state)) == {"encoder/1/bn/mean", "encoder/1/bn/var",
                                              "decoder/0/bn/mean", "decoder/0/bn/var"}


def test_merge_round_trips_exactly():
    model = _model()
    _train_a_little(model)
    apply, params, state = functional.split(model)
    again = functional.merge(apply, params, state)
    _leaves_equal(nnx.state(again), nnx.state(model))
    _leaves_equal(functional.split(again)[1:], (params, state))


@pytest.mark.slow
def test_npz_and_orbax_round_trip_exactly(tmp_path):
    model = _model()
    _train_a_little(model)
    apply, params, state = functional.split(model)
    functional.save_npz(tmp_path / "w.npz", params, state)
    _leaves_equal(functional.load_npz(tmp_path / "w.npz"), (params, state))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "orbax", {"params": params, "state": state})
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "orbax")
    _leaves_equal((restored["params"], restored["state"]), (params, state))
    image, mask = _batch()
    np.testing.assert_array_equal(
        apply(restored["params"], restored["state"], image, mask)[0], model(image, mask))


def test_a_tree_of_another_network_is_refused_by_name(tmp_path):
    apply, params, state = functional.split(_model())
    _, other, _ = functional.split(PConvUNet(depth=2, widths=(4, 16), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"params entry 'decoder/0/conv/kernel' has shape "
                       r"\(3, 3, 20, 4\); this network's is \(3, 3, 12, 4\)"):
        functional.merge(apply, other, state)
    del params["decoder"]["1"]
    with pytest.raises(ValueError, match=r"params has no entry 'decoder/1'"):
        functional.merge(apply, params, state)
    np.savez(tmp_path / "other.npz", kernel=np.zeros(3))
    with pytest.raises(ValueError, match="not written by functional.save_npz"):
        functional.load_npz(tmp_path / "other.npz")


def test_apply_equals_the_model_in_eval_mode():
    model = _model()
    _train_a_little(model)
    apply, params, state = functional.split(model)
    image, mask = _batch()
    output, new_state = apply(params, state, image, mask)
    np.testing.assert_array_equal(output, model(image, mask))
    _leaves_equal(new_state, state)


def test_apply_equals_the_model_in_train_mode_with_the_new_statistics():
    model = _model()
    apply, params, state = functional.split(model)
    image, mask = _batch()
    output, new_state = jax.jit(apply, static_argnames="train")(params, state, image, mask,
                                                                train=True)
    model.train()
    expected = model(image, mask)  # updates the model's statistics in place
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)  # jit vs eager
    _, _, expected_state = functional.split(model)
    for name, value in functional.flatten(expected_state).items():
        np.testing.assert_allclose(functional.flatten(new_state)[name], value, rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(new_state["encoder"]["1"]["bn"]["mean"],
                           state["encoder"]["1"]["bn"]["mean"])
    _leaves_equal(functional.split(model)[1], params)  # params untouched by the call


def test_grad_in_train_mode_under_jit_and_checkpoint():
    """The pitfall this module exists for: merging inside a transform in train mode."""
    apply, params, state = functional.split(_model())
    image, mask = _batch()

    def loss(params, state):
        output, new_state = apply(params, state, image, mask, train=True)
        return jnp.mean((output - image) ** 2), new_state

    grads, new_state = jax.jit(jax.grad(loss, has_aux=True))(params, state)
    remat_grads, _ = jax.jit(jax.grad(jax.checkpoint(loss), has_aux=True))(params, state)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_vmap_over_an_ensemble_of_stacked_parameters():
    members = [functional.split(_model(seed)) for seed in range(4)]
    apply = members[0][0]
    stacked_params = jax.tree.map(lambda *x: jnp.stack(x), *[m[1] for m in members])
    stacked_state = jax.tree.map(lambda *x: jnp.stack(x), *[m[2] for m in members])
    image, mask = _batch()
    outputs, _ = jax.jit(jax.vmap(lambda p, s: apply(p, s, image, mask)))(stacked_params,
                                                                          stacked_state)
    assert outputs.shape == (4, 2, 16, 16, 3)
    for i, (_, params, state) in enumerate(members):
        np.testing.assert_allclose(outputs[i], apply(params, state, image, mask)[0], atol=1e-5)
