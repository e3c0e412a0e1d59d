"""float64 end to end: the network, VGG16 and the loss compute in float64 when asked, so the
whole loss passes `check_grads` at float64 tolerance. x64 is on only inside each test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from pconv_jax import partial_conv
from pconv_jax.loss import losses
from pconv_jax.network.unet import PConvUNet
from pconv_jax.network.vgg16 import random_vgg16
from tests.helpers.references import reference_partial_conv


def image_and_mask(size=16, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((2, size, size, 3))
    mask = np.ones((2, size, size, 1))
    mask[:, 3:9, 4:11] = 0  # a block hole
    mask[rng.random(mask.shape) < 0.1] = 0  # and scattered hole pixels
    return image, mask


@pytest.mark.slow
def test_full_loss_passes_check_grads_in_float64_wrt_network_parameters():
    with jax.enable_x64(True):
        model = PConvUNet(depth=3, widths=(4, 8, 8), dtype=jnp.float64, rngs=nnx.Rngs(0))
        model.train()
        graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        dtypes = {leaf.dtype for leaf in jax.tree.leaves((params, batch_stats))}
        assert dtypes == {np.dtype("float64")}
        image, mask = image_and_mask()
        vgg = random_vgg16(jax.random.key(0))

        @jax.jit
        def loss(params):
            net = nnx.merge(graphdef, params, batch_stats, copy=True)
            output = net(image * mask, mask)
            assert output.dtype == jnp.float64
            total, terms = losses.inpainting_loss(output, image, mask, vgg)  # all six terms
            assert all(t.dtype == jnp.float64 for t in terms.values())
            return total

        assert loss(params).dtype == jnp.float64
        # eps: small enough that no ReLU or |x| kink lies within the step at these inputs
        # (1e-6 steps over one: 1e-4 errors), large enough for float64 rounding (1e-10 errors).
        check_grads(loss, (params,), order=2, modes=["rev"], eps=1e-7)


@pytest.mark.slow
def test_float64_network_computes_what_the_float32_network_does():
    image, mask = image_and_mask(seed=1)
    model32 = PConvUNet(depth=3, widths=(4, 8, 8), rngs=nnx.Rngs(0))
    model32.eval()
    out32 = model32(jnp.asarray(image, jnp.float32), jnp.asarray(mask, jnp.float32))
    with jax.enable_x64(True):
        model64 = PConvUNet(depth=3, widths=(4, 8, 8), dtype=jnp.float64, rngs=nnx.Rngs(0))
        graphdef, _ = nnx.split(model64)
        state32 = nnx.state(model32)
        model = nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), state32))
        model.eval()
        out64 = model(image, mask)
        assert out64.dtype == jnp.float64
        np.testing.assert_allclose(out64, out32, atol=1e-5 * float(jnp.abs(out64).max()))


def test_float64_partial_conv_rescales_in_float64():
    """The ratio C_in k^2 / S in float64 (a float32 ratio is off by ~1e-8)."""
    rng = np.random.default_rng(2)
    mask = (rng.random((1, 9, 9, 1)) > 0.4).astype(np.float64)
    with jax.enable_x64(True):
        x, kernel = rng.normal(size=(1, 9, 9, 3)), rng.normal(size=(3, 3, 3, 2))
        y, _ = partial_conv(x, mask, kernel)
        want, _ = reference_partial_conv(x, mask, kernel, None, 1, 1)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_loss_of_float32_images_with_x64_on_is_the_float32_loss():
    image, mask = image_and_mask(seed=3)
    out = np.asarray(image[::-1], np.float32)
    image, mask = np.asarray(image, np.float32), np.asarray(mask, np.float32)
    vgg = random_vgg16(jax.random.key(0))
    total, terms = losses.inpainting_loss(out, image, mask, vgg)
    with jax.enable_x64(True):
        total_x64, terms_x64 = losses.inpainting_loss(out, image, mask, vgg)
    assert total_x64.dtype == jnp.float32
    np.testing.assert_allclose(total_x64, total, rtol=1e-6)
    for name in losses.TERMS:
        assert terms_x64[name].dtype == jnp.float32, name
        np.testing.assert_allclose(terms_x64[name], terms[name], rtol=1e-6, err_msg=name)
