"""The network as an inpainter: mirror padding, bucketed sides, holes beyond its reach."""

import warnings

import numpy as np
import pytest
from flax import nnx

from pconv_jax.inference import methods, model_inpainter
from pconv_jax.network.unet import PConvUNet


def test_padding_mirrors_the_mask_too():
    image = np.arange(3 * 5 * 3, dtype=np.float32).reshape(3, 5, 3)
    mask = np.ones((3, 5, 1), np.float32)
    mask[2, 4] = 0  # a hole in the bottom-right corner
    padded_image, padded_mask = model_inpainter.pad_to_size(image, mask, (4, 8))
    assert padded_image.shape == (4, 8, 3) and padded_mask.shape == (4, 8, 1)
    assert padded_mask[3, 5, 0] == 0 and padded_mask[2, 5, 0] == 0  # mirrors of the hole
    assert padded_mask[0, 5, 0] == 1
    np.testing.assert_array_equal(padded_image[:3, :5], image)


@pytest.mark.slow
def test_holes_beyond_the_receptive_field_are_filled_with_a_warning():
    # A depth-2 network reaches about 10 px; a 40x40 hole in a 64x96 image leaves its centre
    # unreached, where the network outputs exactly 0 (black).
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    last = model.decoder[-1].conv  # wherever it is reached, the output is about 0.5: not black
    last.kernel[...] = last.kernel[...] * 0.01
    last.bias[...] = last.bias[...] + 0.5
    y, x = np.mgrid[0:64, 0:96]
    image = np.stack([x / 95, y / 63, 0.2 + 0.6 * (x + y) / 158], -1).astype(np.float32)
    mask = np.ones((64, 96, 1), np.float32)
    mask[12:52, 20:60] = 0
    output, final = model(image[None], mask[None], return_mask=True)
    unreached = np.asarray(final)[0, ..., 0] == 0
    assert unreached.any() and (np.asarray(output)[0][unreached] == 0).all()  # the defect

    fill = model_inpainter.ModelInpainter(model)
    with pytest.warns(UserWarning, match=r"% of the hole pixels \(\d+ px\) lie beyond"):
        out = model_inpainter.inpaint_image(fill, image, mask)
    hole = mask[..., 0] == 0
    np.testing.assert_array_equal(out[~hole], image[~hole])  # known pixels identical
    assert not (out[hole] == 0).all(axis=-1).any()  # no black pixel left in the hole
    assert fill.unreached_pixels == unreached.sum() < hole.sum()
    assert fill.hole_pixels == hole.sum()


@pytest.mark.slow
def test_no_warning_and_identical_result_when_every_hole_is_reached():
    model = PConvUNet(depth=3, widths=(4, 8, 8), rngs=nnx.Rngs(0))
    image = np.random.default_rng(0).random((32, 32, 3), np.float32)
    mask = np.ones((32, 32, 1), np.float32)
    mask[10:14, 10:14] = 0
    fill = model_inpainter.ModelInpainter(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model_inpainter.inpaint_image(fill, image, mask)
    raw = np.clip(np.asarray(model(image[None], mask[None]))[0], 0, 1)
    np.testing.assert_allclose(out, np.where(mask > 0, image, raw), atol=1e-6)
    assert fill.unreached_pixels == 0


def test_the_unreached_share_counts_the_photos_hole_pixels_only():
    # A 1-pixel-high photo padded to a 64-row bucket: the padding mirrors its holes 63 times.
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    image = np.random.default_rng(0).random((1, 300, 3), np.float32)
    mask = np.ones((1, 300, 1), np.float32)
    mask[0, 100:200] = 0  # 100 hole pixels, most beyond a depth-2 network's reach
    fill = model_inpainter.ModelInpainter(model, pad_side=model_inpainter.bucket_side)
    with pytest.warns(UserWarning, match=r"of the hole pixels \((\d+) px\)") as record:
        out = model_inpainter.inpaint_image(fill, image, mask)
    assert fill.hole_pixels == 100
    assert 0 < fill.unreached_pixels < 100
    assert f"({fill.unreached_pixels} px)" in str(record[0].message)
    np.testing.assert_array_equal(out[mask[..., 0] > 0], image[mask[..., 0] > 0])


def test_similar_sizes_share_a_padded_shape():
    """The app's networks pad photos of similar sizes to one bucket: one compilation for all."""
    from flax import nnx

    from pconv_jax.network.unet import PConvUNet
    network = model_inpainter.ModelInpainter(PConvUNet(depth=2, widths=(4, 8),
                                                       rngs=nnx.Rngs(0)),
                                             pad_side=model_inpainter.bucket_side)
    seen: list[tuple[int, ...]] = []
    run = network._run
    network._run = lambda images, masks: (seen.append(images.shape), run(images, masks))[1]
    method = methods.Method("network", "network", network)
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (360, 480), (333, 401)):
        image = rng.random((h, w, 3), np.float32)
        valid = np.ones((h, w, 1), np.float32)
        valid[100:104, 100:104] = 0
        out = method(image, valid)
        assert out.shape == (h, w, 3)
        np.testing.assert_array_equal(out[valid[..., 0] > 0], image[valid[..., 0] > 0])
    assert seen == [(1, 384, 512, 3)] * 3
    assert model_inpainter.bucket_side(1000, 256) == 1024
    assert model_inpainter.bucket_side(1100, 8) == 1280
