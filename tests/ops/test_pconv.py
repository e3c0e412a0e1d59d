"""The functional partial convolution against an independent NumPy reference of the
paper's Eq. 1."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from pconv_jax import partial_conv
from tests.helpers.references import reference_partial_conv


def random_mask(rng, shape, hole_box=True):
    mask = (rng.random(shape) > 0.4).astype(np.float32)
    if hole_box:  # a large hole so that some windows are entirely hole
        mask[:, 1 : shape[1] - 1, 1:6] = 0
    return mask


CASES = list(itertools.product([1, 3, 5, 7], [1, 2], [1, 2], ["shared", "per_channel"]))


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_reference(case):
    k, stride, dilation, mask_kind = CASES[case]
    rng = np.random.default_rng(case)
    h, w = (9, 8) if case % 2 else (10, 11)  # odd and even sizes
    c_in, c_out = 3, 4
    x = rng.normal(size=(2, h, w, c_in)).astype(np.float32)
    mask = random_mask(rng, (2, h, w, 1 if mask_kind == "shared" else c_in))
    kernel = rng.normal(size=(k, k, c_in, c_out)).astype(np.float32)
    bias = rng.normal(size=(c_out,)).astype(np.float32) if case % 3 else None

    y, new_mask = partial_conv(x, mask, kernel, bias, stride=stride, dilation=dilation)
    y_ref, mask_ref = reference_partial_conv(x, mask, kernel, bias, stride, dilation)

    assert y.shape == y_ref.shape and new_mask.shape == mask_ref.shape
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(new_mask, mask_ref)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    if k == 1 and stride == 1:  # 1x1 windows over a big hole: some are entirely hole
        assert mask_ref.min() == 0
        np.testing.assert_array_equal(np.asarray(y)[mask_ref[..., 0] == 0], 0.0)


def test_explicit_padding_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 7, 7, 2)).astype(np.float32)
    mask = random_mask(rng, (1, 7, 7, 1))
    kernel = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    y_none, _ = partial_conv(x, mask, kernel)
    y_int, _ = partial_conv(x, mask, kernel, padding=1)
    y_pairs, _ = partial_conv(x, mask, kernel, padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(y_none, y_int)
    np.testing.assert_array_equal(y_none, y_pairs)
    y_valid, m_valid = partial_conv(x, mask, kernel, padding=0)
    assert y_valid.shape == (1, 5, 5, 2) and m_valid.shape == (1, 5, 5, 1)


def test_all_valid_mask_is_plain_conv_inside_and_rescaled_at_border():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    y, new_mask = partial_conv(x, np.ones((1, 8, 8, 1), np.float32), kernel)
    plain = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(new_mask, 1.0)
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], plain[:, 1:-1, 1:-1], atol=1e-5)
    # Corner windows see 4 of 9 pixels, edges 6 of 9: zero padding counts as hole.
    np.testing.assert_allclose(y[0, 0, 0], plain[0, 0, 0] * 9 / 4, atol=1e-5)
    np.testing.assert_allclose(y[0, 0, 4], plain[0, 0, 4] * 9 / 6, atol=1e-5)


def test_output_ignores_pixel_values_in_holes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
    mask = random_mask(rng, (2, 12, 12, 1))
    kernel = rng.normal(size=(5, 5, 3, 4)).astype(np.float32)
    noise = rng.normal(size=x.shape).astype(np.float32) * 100
    y1, m1 = partial_conv(x, mask, kernel, stride=2)
    y2, m2 = partial_conv(np.where(mask > 0, x, noise), mask, kernel, stride=2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m2)


def test_gradients_float64():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(1, 6, 6, 2)))
        mask = jnp.asarray(random_mask(rng, (1, 6, 6, 2)), jnp.float64)
        kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3)))
        bias = jnp.asarray(rng.normal(size=(3,)))

        def f(x, kernel, bias):
            return partial_conv(x, mask, kernel, bias, stride=2)[0]

        check_grads(f, (x, kernel, bias), order=1, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)
        # No gradient flows through the mask.
        g_mask = jax.grad(lambda m: partial_conv(x, m, kernel, bias)[0].sum())(mask)
        np.testing.assert_array_equal(g_mask, 0.0)


def test_jit_vmap_checkpoint_match_eager():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 2, 8, 8, 3)), jnp.float32)
    mask = jnp.asarray(random_mask(rng, (3, 2, 8, 8, 1)))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(4,)), jnp.float32)

    def f(x, m):
        return partial_conv(x, m, kernel, bias, stride=2)

    eager_y = np.stack([f(x[i], mask[i])[0] for i in range(3)])
    eager_m = np.stack([f(x[i], mask[i])[1] for i in range(3)])
    for transformed in (jax.vmap(f), jax.jit(jax.vmap(f)), jax.vmap(jax.checkpoint(f))):
        y, m = transformed(x, mask)
        np.testing.assert_allclose(y, eager_y, atol=1e-6)
        np.testing.assert_array_equal(m, eager_m)

    def loss(k):
        return partial_conv(x[0], mask[0], k, bias)[0].sum() ** 2

    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(kernel), jax.grad(loss)(kernel),
                               rtol=1e-5)


def test_grouped_masks_match_explicit_channel_mask():
    """Decoder-style input: [upsampled (4 ch, shared mask) | skip (3 ch, per-channel mask)]."""
    rng = np.random.default_rng(5)
    up = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    skip = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    m_up = random_mask(rng, (2, 8, 8, 1))
    m_skip = random_mask(rng, (2, 8, 8, 3), hole_box=False)
    kernel = rng.normal(size=(3, 3, 7, 5)).astype(np.float32)
    bias = rng.normal(size=(5,)).astype(np.float32)

    y, new_mask = partial_conv([up, skip], [m_up, m_skip], kernel, bias)
    explicit_mask = np.concatenate([np.repeat(m_up, 4, axis=-1), m_skip], axis=-1)
    y_ref, mask_ref = reference_partial_conv(np.concatenate([up, skip], -1), explicit_mask,
                                             kernel, bias, 1, 1)
    np.testing.assert_array_equal(new_mask, mask_ref)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)


def test_bfloat16_features():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 16, 16, 8)).astype(np.float32)
    mask = random_mask(rng, (1, 16, 16, 1))
    kernel = (rng.normal(size=(3, 3, 8, 8)) / 8).astype(np.float32)
    y32, m32 = partial_conv(x, mask, kernel)
    y16, m16 = partial_conv(jnp.asarray(x, jnp.bfloat16), mask, jnp.asarray(kernel, jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(m16, m32)
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05, rtol=0.05)
    assert np.all(np.isfinite(np.asarray(y16, np.float32)))


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((1, 8, 8, 3), np.float32)
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        partial_conv(x, np.ones((1, 8, 7, 1), np.float32), kernel)
    with pytest.raises(ValueError, match="input channels"):
        partial_conv(x, np.ones((1, 8, 8, 1), np.float32), np.zeros((3, 3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="one mask per group"):
        partial_conv([x, x], np.ones((1, 8, 8, 1), np.float32), np.zeros((3, 3, 6, 2), np.float32))


@pytest.mark.multidevice
def test_sharded_batch_matches_single_device():
    assert jax.device_count() == 8, "tests/conftest.py asks for 8 simulated CPU devices"
    rng = np.random.default_rng(7)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    mask = random_mask(rng, (8, 8, 8, 1))
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    xs, ms = jax.device_put(x, batch_sharding), jax.device_put(mask, batch_sharding)
    y, m = jax.jit(partial_conv)(xs, ms, jax.device_put(kernel, replicated))
    assert y.sharding.spec[0] == "data"
    y_ref, m_ref = partial_conv(x, mask, kernel)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    np.testing.assert_array_equal(m, m_ref)
