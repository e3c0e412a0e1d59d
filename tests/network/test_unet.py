"""The NNX layers and the PConv UNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pconv_jax import PartialConv, PConvUNet, composite, partial_conv
from pconv_jax.network.unet import encoder_batchnorm_filter, paper_kernel_sizes, paper_widths


def small_unet(depth, partial=True, seed=0, **kw):
    return PConvUNet(depth=depth, widths=(4, 8) + (8,) * (depth - 2), partial=partial,
                     rngs=nnx.Rngs(seed), **kw)


@nnx.jit
def forward(model, image, mask):
    return model(image, mask)


def box_mask(n, size, top, left, height, width):
    mask = np.ones((n, size, size, 1), np.float32)
    mask[:, top:top + height, left:left + width] = 0
    return mask


def test_paper_table():
    assert paper_widths(8) == (64, 128, 256, 512, 512, 512, 512, 512)
    assert paper_kernel_sizes(7) == (7, 5, 5, 3, 3, 3, 3)
    model = nnx.eval_shape(lambda: PConvUNet(depth=8, rngs=nnx.Rngs(0)))
    decoder_out = [block.conv.kernel.shape[-1] for block in model.decoder]
    assert decoder_out == [512, 512, 512, 512, 256, 128, 64, 3]
    decoder_in = [block.conv.kernel.shape[-2] for block in model.decoder]
    assert decoder_in == [1024, 1024, 1024, 1024, 768, 384, 192, 67]
    assert model.encoder[0].bn is None and model.encoder[1].bn is not None
    assert model.decoder[-1].bn is None and model.decoder[0].bn is not None
    assert model.encoder[1].bn.momentum == 0.9


def test_partial_conv_layer_init_and_call():
    layer = PartialConv(3, 16, 5, stride=2, rngs=nnx.Rngs(0))
    kernel = np.asarray(layer.kernel[...])
    assert kernel.shape == (5, 5, 3, 16)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 75), rtol=0.15)  # He-normal, fan-in
    np.testing.assert_array_equal(layer.bias[...], 0.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    mask = box_mask(2, 16, 2, 2, 8, 8)
    y, m = layer(x, mask)
    y_ref, m_ref = partial_conv(x, mask, layer.kernel[...], layer.bias[...], stride=2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(m, m_ref)


@pytest.mark.parametrize("size,depth", [(256, 7), (512, 8)])
def test_output_shapes(size, depth):
    model = small_unet(depth)
    image = jnp.zeros((1, size, size, 3))
    out = forward(model, image, jnp.asarray(box_mask(1, size, 30, 40, 100, 60)))
    assert out.shape == (1, size, size, 3) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))


def test_bottleneck_mask_is_valid_for_moderate_holes():
    model = small_unet(7)
    mask = box_mask(2, 256, 60, 80, 96, 64)  # ~9% hole
    levels = nnx.jit(lambda m, x, k: m.encode(x, k))(model, jnp.zeros((2, 256, 256, 3)),
                                                     jnp.asarray(mask))
    assert [lvl[1].shape[1] for lvl in levels] == [256, 128, 64, 32, 16, 8, 4, 2]
    np.testing.assert_array_equal(levels[-1][1], 1.0)
    assert levels[1][1].min() == 0  # the first level still has holes
    # Each level's mask grows the valid region: valid stays valid.
    for (_, fine), (_, coarse) in zip(levels[1:], levels[2:]):
        assert coarse.mean() >= fine.mean()


def test_hole_free_mask_composite_equals_input():
    model = small_unet(4)
    image = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    mask = jnp.ones((2, 32, 32, 1))
    out = forward(model, image, mask)
    np.testing.assert_array_equal(composite(out, image, mask), image)
    # With holes, the composite keeps the known pixels and takes the output in holes.
    holes = jnp.asarray(box_mask(2, 32, 4, 4, 10, 10))
    out = forward(model, image, holes)
    comp = composite(out, image, holes)
    np.testing.assert_array_equal(comp[:, 20:, 20:], image[:, 20:, 20:])
    np.testing.assert_array_equal(comp[:, 4:14, 4:14], out[:, 4:14, 4:14])


def test_output_ignores_hole_content():
    model = small_unet(4)
    model.eval()
    key1, key2 = jax.random.split(jax.random.key(1))
    image = jax.random.uniform(key1, (2, 32, 32, 3))
    mask = jnp.asarray(box_mask(2, 32, 5, 9, 12, 8))
    noise = jax.random.uniform(key2, image.shape) * 10
    np.testing.assert_array_equal(forward(model, image, mask),
                                  forward(model, jnp.where(mask > 0, image, noise), mask))


def count_primitives(model, image, mask):
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(image, mask))(state))
    return jaxpr.count("conv_general_dilated"), jaxpr.count("reduce_window_sum")


def test_plain_conv_switch_uses_plain_convolutions():
    depth = 4
    image = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3))
    mask = jnp.asarray(box_mask(1, 32, 5, 5, 12, 12))
    partial_model, plain_model = small_unet(depth), small_unet(depth, partial=False)
    # Both: one image convolution per layer. Partial adds the mask path, a separable window sum
    # (two one-axis sums) per layer; plain has none.
    assert count_primitives(partial_model, image, mask) == (2 * depth, 2 * 2 * depth)
    assert count_primitives(plain_model, image, mask) == (2 * depth, 0)

    # Same parameter shapes, so the comparison is like for like.
    def shapes(m):
        return jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))

    assert shapes(partial_model) == shapes(plain_model)
    # The baseline sees holes filled with a constant: its output depends on that constant.
    plain_model.eval()
    other_fill = small_unet(depth, partial=False, hole_fill=0.0)
    other_fill.eval()
    assert not np.allclose(forward(plain_model, image, mask), forward(other_fill, image, mask))


def test_bad_sizes_and_masks_raise():
    model = small_unet(4)
    with pytest.raises(ValueError, match=r"height 40 .*multiple of 2\*\*depth = 16.*32 or 48"):
        model(jnp.zeros((1, 40, 32, 3)), jnp.ones((1, 40, 32, 1)))
    with pytest.raises(ValueError, match=r"width 20 .*16 or 32"):
        model(jnp.zeros((1, 32, 20, 3)), jnp.ones((1, 32, 20, 1)))
    with pytest.raises(ValueError, match=r"mask of shape \(1, 32, 16, 1\).*image of shape"):
        model(jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 32, 16, 1)))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 32, 32, 1\)"):
        model(jnp.zeros((1, 32, 32, 3)), jnp.ones((2, 32, 32, 1)))


def test_soft_mask_is_binarised_at_one_half():
    model = small_unet(4)
    model.eval()
    image = jax.random.uniform(jax.random.key(3), (1, 32, 32, 3))
    binary = jnp.asarray(box_mask(1, 32, 3, 3, 10, 10))
    soft = jnp.where(binary > 0, 0.7, 0.3)
    np.testing.assert_array_equal(forward(model, image, binary), forward(model, image, soft))


def test_frozen_encoder_batchnorm_uses_running_statistics():
    model = small_unet(4)
    model.train()
    image = jax.random.uniform(jax.random.key(4), (4, 32, 32, 3))
    mask = jnp.asarray(box_mask(4, 32, 3, 3, 10, 10))
    before = nnx.state(model, nnx.BatchStat)
    model.freeze_encoder_bn = True
    forward(model, image, mask)
    after = nnx.state(model, nnx.BatchStat)
    for i in range(1, 4):
        np.testing.assert_array_equal(after["encoder"][i]["bn"]["mean"][...],
                                      before["encoder"][i]["bn"]["mean"][...])
    assert not np.allclose(after["decoder"][0]["bn"]["mean"][...], 0.0)
    # The filter selects exactly the encoder BN scale and bias.
    params = nnx.state(model, nnx.Param)
    selected = [p for p, v in jax.tree_util.tree_leaves_with_path(params)
                if encoder_batchnorm_filter(p, v)]
    assert len(selected) == 2 * 3


@pytest.mark.slow
def test_bfloat16_compute():
    model = PConvUNet(depth=3, widths=(8, 16, 16), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ref = PConvUNet(depth=3, widths=(8, 16, 16), rngs=nnx.Rngs(0))
    model.eval(), ref.eval()
    image = jax.random.uniform(jax.random.key(5), (2, 16, 16, 3))
    mask = jnp.asarray(box_mask(2, 16, 4, 4, 6, 6))
    out16, out32 = forward(model, image, mask), forward(ref, image, mask)
    assert out16.dtype == jnp.float32
    assert nnx.state(model, nnx.Param)["encoder"][0]["conv"]["kernel"][...].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))} == {np.dtype("f4")}
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.abs(out32).max()))


@pytest.mark.slow
def test_remat_gives_the_same_output_gradients_and_statistics():
    image = jax.random.uniform(jax.random.key(6), (2, 16, 16, 3))
    mask = jnp.asarray(box_mask(2, 16, 3, 3, 6, 6))

    def loss_grads_stats(remat):
        model = PConvUNet(depth=3, widths=(4, 8, 8), remat=remat, rngs=nnx.Rngs(0))
        model.train()

        @nnx.jit
        def step(model):
            def loss(m):
                return jnp.mean(jnp.abs(m(image, mask) - image))

            return nnx.value_and_grad(loss)(model)

        value, grads = step(model)
        return value, grads, nnx.state(model, nnx.BatchStat)

    # Every block (3 encoder, 3 decoder) is wrapped in a remat.
    model = PConvUNet(depth=3, widths=(4, 8, 8), remat=True, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(image, mask))(state))
    assert jaxpr.count("remat") == 6

    plain, remat = loss_grads_stats(False), loss_grads_stats(True)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 remat[1], plain[1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), remat[2], plain[2])


@pytest.mark.slow
def test_final_mask_on_request_marks_what_the_network_reaches():
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    image = jnp.full((1, 64, 64, 3), 0.5)
    mask = jnp.ones((1, 64, 64, 1)).at[:, 8:56, 8:56].set(0.0)  # a hole too large to reach
    plain = model(image, mask)
    output, final = model(image, mask, return_mask=True)
    np.testing.assert_array_equal(output, plain)  # the default return is unchanged
    assert final.shape == (1, 64, 64, 1) and set(np.unique(final)) == {0.0, 1.0}
    assert (final[mask > 0] == 1).all()  # known pixels are always reached
    assert final[0, 32, 32, 0] == 0 and final[0, 10, 10, 0] == 1
    np.testing.assert_array_equal(output[0][final[0, ..., 0] == 0], 0.0)
    baseline = PConvUNet(depth=2, widths=(4, 8), partial=False, rngs=nnx.Rngs(0))
    _, final = baseline(image, mask, return_mask=True)
    np.testing.assert_array_equal(final, 1.0)
