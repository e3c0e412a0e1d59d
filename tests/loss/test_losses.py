"""The inpainting loss against a NumPy float64 reference written from the paper's formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pconv_jax.loss import losses
from pconv_jax.network import vgg16 as vgg
from pconv_jax.network.unet import PConvUNet
from pconv_jax.weights import vgg16_files
from tests.helpers.training import default_config

loss_jit = jax.jit(losses.inpainting_loss)  # shared, so tests with equal shapes compile once
PAPER_WEIGHTS = {"valid": 1.0, "hole": 6.0, "perceptual": 0.05, "style_out": 120.0,
                 "style_comp": 120.0, "tv": 0.1}

# --------------------------------------------------------------------------- NumPy reference


def ref_vgg_pools(convs, images):
    """VGG16 pool1..pool3 in float64: 3x3 conv as a sum of 9 shifted products, ReLU, 2x2 max."""
    x = (np.asarray(images, np.float64) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    pools = []
    for block in (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"),
                  ("conv3_1", "conv3_2", "conv3_3")):
        for name in block:
            k = np.asarray(convs[name]["kernel"], np.float64)  # HWIO
            n, h, w, _ = x.shape
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            y = np.zeros((n, h, w, k.shape[3])) + np.asarray(convs[name]["bias"], np.float64)
            for di in range(3):
                for dj in range(3):
                    y += padded[:, di:di + h, dj:dj + w, :] @ k[di, dj]
            x = np.maximum(y, 0.0)
        n, h, w, c = x.shape
        x = np.max(np.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=4), axis=2)
        pools.append(x)
    return pools


def ref_gram(f):
    n, h, w, c = f.shape
    flat = f.reshape(n, h * w, c)
    return np.stack([flat[i].T @ flat[i] for i in range(n)]) / (c * h * w)


def ref_tv(comp, mask):
    """The paper's L_tv with explicit loops: pairs of neighbours both in the dilated hole region."""
    n, h, w, c = comp.shape
    hole = np.broadcast_to(1.0 - mask, comp.shape)
    region = np.zeros(comp.shape, bool)
    for i in range(h):
        for j in range(w):
            region[:, i, j, :] = (
                hole[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :].max(axis=(1, 2)) > 0)
    total = 0.0
    for i in range(h):
        for j in range(w):
            if j + 1 < w:
                both = region[:, i, j] & region[:, i, j + 1]
                total += np.sum(np.abs(comp[:, i, j + 1] - comp[:, i, j]) * both)
            if i + 1 < h:
                both = region[:, i, j] & region[:, i + 1, j]
                total += np.sum(np.abs(comp[:, i + 1, j] - comp[:, i, j]) * both)
    return total / comp.size


def ref_loss_terms(out, gt, mask, convs=None):
    out, gt, mask = (np.asarray(a, np.float64) for a in (out, gt, mask))
    comp = mask * gt + (1 - mask) * out
    full = np.broadcast_to(mask, out.shape)
    terms = {
        "valid": np.abs(full * (out - gt)).sum() / out.size,
        "hole": np.abs((1 - full) * (out - gt)).sum() / out.size,
        "tv": ref_tv(comp, mask),
    }
    if convs is None:
        return terms
    p_out, p_comp, p_gt = (ref_vgg_pools(convs, out), ref_vgg_pools(convs, comp),
                           ref_vgg_pools(convs, gt))
    terms["perceptual"] = sum(np.mean(np.abs(a - g)) + np.mean(np.abs(b - g))
                              for a, b, g in zip(p_out, p_comp, p_gt))
    terms["style_out"] = sum(np.mean(np.abs(ref_gram(a) - ref_gram(g)))
                             for a, g in zip(p_out, p_gt))
    terms["style_comp"] = sum(np.mean(np.abs(ref_gram(b) - ref_gram(g)))
                              for b, g in zip(p_comp, p_gt))
    return terms


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def random_vgg():
    return vgg.random_vgg16(jax.random.key(0))


def make_inputs(seed, shape=(2, 16, 16, 3), mask_channels=1):
    rng = np.random.default_rng(seed)
    out = rng.uniform(size=shape).astype(np.float32)
    gt = rng.uniform(size=shape).astype(np.float32)
    mask = np.ones(shape[:3] + (mask_channels,), np.float32)
    mask[:, 3:9, 4:11] = 0.0  # a block hole
    mask[(rng.uniform(size=mask.shape) < 0.1)] = 0.0  # and scattered hole pixels
    return out, gt, mask


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mask_channels", [1, 3])
def test_every_term_matches_numpy_reference(random_vgg, mask_channels):
    out, gt, mask = make_inputs(0, mask_channels=mask_channels)
    total, terms = loss_jit(out, gt, mask, random_vgg)
    want = ref_loss_terms(out, gt, mask, random_vgg.convs)
    assert set(terms) == set(PAPER_WEIGHTS)
    for name, value in want.items():
        assert value > 0, name  # the inputs exercise every term
        np.testing.assert_allclose(float(terms[name]), value, rtol=2e-4, err_msg=name)
    np.testing.assert_allclose(float(total), sum(PAPER_WEIGHTS[k] * want[k] for k in want),
                               rtol=2e-4)


def test_tv_counts_only_pairs_in_the_dilated_hole_region():
    out, gt, mask = make_inputs(1, shape=(1, 16, 16, 3))
    mask[:] = 1.0
    mask[0, 2:5, 2:5] = 0.0  # one hole; its 1-pixel dilation is rows/cols 1..5
    weights = {"perceptual": 0.0, "style_out": 0.0, "style_comp": 0.0}

    def tv(o, g):
        return float(losses.inpainting_loss(o, g, mask, weights=weights)[1]["tv"])

    base = tv(out, gt)
    np.testing.assert_allclose(base, ref_tv(mask * gt + (1 - mask) * out, mask), rtol=1e-5)
    far = gt.copy()
    far[0, 7:, :] = 0.0  # valid pixels two or more rows away from the dilated region
    far[0, :, 7:] = 1.0
    assert tv(out, far) == base
    near = gt.copy()
    near[0, 5, 3] += 0.5  # a valid pixel in the dilation ring, next to the hole
    assert tv(out, near) != base


def test_hole_free_mask_gives_zero_hole_and_tv(random_vgg):
    out, gt, _ = make_inputs(2)
    mask = np.ones(out.shape[:3] + (1,), np.float32)
    _, terms = loss_jit(out, gt, mask, random_vgg)
    assert float(terms["hole"]) == 0.0 and float(terms["tv"]) == 0.0
    assert abs(float(terms["style_comp"])) < 1e-6  # composite == ground truth (up to rounding)
    assert float(terms["valid"]) > 0.0


def test_gram_matrix_normalisation_and_bfloat16():
    f = np.random.default_rng(3).standard_normal((2, 6, 5, 4)).astype(np.float32)
    g = np.asarray(losses.gram_matrix(jnp.asarray(f)))
    np.testing.assert_allclose(g, ref_gram(f.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.gram_matrix(jnp.asarray(2 * f))), 4 * g, rtol=1e-6)
    # Large bfloat16 activations (sums that would lose all precision in bfloat16): float32 result.
    big = np.abs(np.random.default_rng(4).standard_normal((1, 64, 64, 8))) * 300
    g_bf16 = losses.gram_matrix(jnp.asarray(big, jnp.bfloat16))
    assert g_bf16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g_bf16), ref_gram(big), rtol=2e-2)


def test_bfloat16_output_gives_float32_terms_close_to_float32(random_vgg):
    out, gt, mask = make_inputs(12, shape=(1, 16, 16, 3))
    _, want = loss_jit(out, gt, mask, random_vgg)
    _, got = loss_jit(jnp.asarray(out, jnp.bfloat16), gt, mask, random_vgg)
    for name in PAPER_WEIGHTS:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=5e-2, err_msg=name)


def test_identical_images_give_zero_loss(random_vgg):
    _, gt, mask = make_inputs(5)
    total, terms = loss_jit(gt, gt, mask, random_vgg)
    assert float(terms["valid"]) == float(terms["hole"]) == 0.0
    # Zero up to float32 rounding (gt and the composite take separate VGG passes); ~1 otherwise.
    for name in ("perceptual", "style_out", "style_comp"):
        assert abs(float(terms[name])) < 1e-5, name
    np.testing.assert_allclose(float(total), 0.1 * float(terms["tv"]), rtol=1e-4, atol=1e-4)


def test_soft_mask_is_binarised_like_the_network():
    out, gt, mask = make_inputs(11)
    weights = {"perceptual": 0.0, "style_out": 0.0, "style_comp": 0.0}
    soft = np.where(mask > 0, 0.8, 0.3).astype(np.float32)
    _, want = losses.inpainting_loss(out, gt, mask, weights=weights)
    _, got = losses.inpainting_loss(out, gt, soft, weights=weights)
    for name in ("valid", "hole", "tv"):
        assert float(got[name]) == float(want[name]), name


def test_missing_vgg_is_a_clear_error():
    out, gt, mask = make_inputs(6)
    with pytest.raises(ValueError, match=r"config\.loss\.vgg_weights"):
        losses.inpainting_loss(out, gt, mask)


def test_vgg_not_run_when_its_weights_are_zero(monkeypatch):
    def fail(*args):
        raise AssertionError("VGG must not run")

    monkeypatch.setattr(losses, "vgg16_features", fail)
    out, gt, mask = make_inputs(7)
    config = default_config().loss
    config.weights.perceptual = config.weights.style_out = config.weights.style_comp = 0.0
    total, terms = losses.inpainting_loss(out, gt, mask, weights=config.weights)
    assert (float(terms["perceptual"]) == float(terms["style_out"])
            == float(terms["style_comp"]) == 0.0)
    want = ref_loss_terms(out, gt, mask)
    np.testing.assert_allclose(float(total), want["valid"] + 6 * want["hole"] + 0.1 * want["tv"],
                               rtol=1e-5)


def test_vgg_for_config(tmp_path):
    config = default_config().loss
    with pytest.raises(ValueError, match=r"config\.loss\.vgg_weights.*vgg16-397923af\.pth"):
        losses.vgg_for_config(config)
    params = vgg.random_vgg16(jax.random.key(1), preprocessing="caffe")
    vgg16_files.save_npz(params, tmp_path / "vgg.npz")
    config.vgg_weights = str(tmp_path / "vgg.npz")
    loaded = losses.vgg_for_config(config)
    assert loaded.preprocessing == "caffe"
    np.testing.assert_array_equal(np.asarray(loaded.convs["conv3_3"]["kernel"]),
                                  np.asarray(params.convs["conv3_3"]["kernel"]))
    config.weights.perceptual = config.weights.style_out = config.weights.style_comp = 0.0
    # A named file is loaded even with the paper's VGG terms off: extra terms may read it.
    assert losses.vgg_for_config(config).preprocessing == "caffe"
    config.vgg_weights = ""
    assert losses.vgg_for_config(config) is None


def test_default_config_and_bad_weights():
    config = default_config().loss
    assert dict(config.weights) == PAPER_WEIGHTS and config.vgg_weights == ""
    out, gt, mask = make_inputs(8)
    config.weights.perceptual = config.weights.style_out = config.weights.style_comp = 0.0
    # static weights
    jitted = jax.jit(functools.partial(losses.inpainting_loss, weights=config.weights))
    np.testing.assert_allclose(float(jitted(out, gt, mask)[0]),
                               float(losses.inpainting_loss(out, gt, mask,
                                                            weights=config.weights)[0]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown loss weight"):
        losses.inpainting_loss(out, gt, mask, weights={"perceptal": 0.0})
    with pytest.raises(ValueError, match="mask must be"):
        losses.inpainting_loss(out, gt, mask[:, :8],
                               weights={"perceptual": 0.0, "style_out": 0, "style_comp": 0})


def test_missing_weights_come_from_the_default_config(monkeypatch):
    """One source of truth: weights the caller leaves out are `config.loss.weights`' defaults."""
    from pconv_jax.configs import default
    assert losses._resolve_weights(None) == PAPER_WEIGHTS
    changed = default.get_config()
    changed.loss.weights.hole = 2.0
    monkeypatch.setattr(default, "get_config", lambda arg=None: changed)
    assert losses._resolve_weights({"tv": 0.5}) == {**PAPER_WEIGHTS, "hole": 2.0, "tv": 0.5}


@pytest.mark.slow
def test_gradient_wrt_model_parameters_is_finite_for_all_hole_and_hole_free_masks(random_vgg):
    model = PConvUNet(depth=2, widths=(4, 8), kernel_sizes=(3, 3), rngs=nnx.Rngs(0))
    _, gt, _ = make_inputs(9, shape=(2, 8, 8, 3))

    @nnx.jit
    def grads(model, mask):
        def loss_fn(model):
            return losses.inpainting_loss(model(gt * mask, mask), gt, mask, random_vgg)[0]

        return nnx.grad(loss_fn)(model)

    for hole_free in (False, True):
        g = grads(model, jnp.full((2, 8, 8, 1), 1.0 if hole_free else 0.0))
        leaves = jax.tree_util.tree_leaves(nnx.state(g, nnx.Param))
        assert leaves and all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
        # With no valid pixel at all a partial-conv network outputs zeros whatever its weights.
        assert any(float(jnp.abs(leaf).max()) > 0 for leaf in leaves) == hole_free


def test_gradient_wrt_output_reaches_perceptual_and_style_terms(random_vgg):
    out, gt, mask = make_inputs(10, shape=(1, 8, 8, 3))
    weights = {"valid": 0.0, "hole": 0.0, "tv": 0.0}  # only the VGG terms
    grad = jax.jit(jax.grad(
        lambda o: losses.inpainting_loss(o, gt, mask, random_vgg, weights)[0]))(out)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


# --------------------------------------------------------------------------- loss dtype, remat

def photo_batch(size: int = 64):
    """Four skimage photographs at `size`², generated irregular masks (10-30 % holes) and
    outputs a network might give: noisy, blurred, holes filled flat, colours shifted."""
    import cv2
    import skimage.data

    from pconv_jax.data.masks import generate_mask
    gt = np.stack([cv2.resize(getattr(skimage.data, name)()[..., :3], (size, size),
                              interpolation=cv2.INTER_AREA)
                   for name in ("astronaut", "chelsea", "coffee", "rocket")]) / 255.0
    mask = np.stack([generate_mask(i, size, hole_ratio_range=(0.1, 0.3)) for i in range(4)])
    rng = np.random.default_rng(0)
    outputs = {"noise": np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1),
               "blur": np.stack([cv2.GaussianBlur(g, (7, 7), 2.0) for g in gt]),
               "flat_holes": gt * mask + (1 - mask) * gt.mean(axis=(1, 2), keepdims=True),
               "shift": np.clip(gt * 0.9 + 0.08, 0, 1)}
    as32 = functools.partial(np.asarray, dtype=np.float32)
    return as32(gt), as32(mask), {k: as32(v) for k, v in outputs.items()}


@functools.partial(jax.jit, static_argnames=("vgg_dtype", "vgg_remat"))
def loss_and_output_gradient(output, target, mask, vgg_params, vgg_dtype, vgg_remat=False):
    """((total, terms), d total / d output) with the paper's weights, one program."""
    def total(out):
        return losses.inpainting_loss(out, target, mask, vgg_params, PAPER_WEIGHTS,
                                      vgg_dtype=vgg_dtype, vgg_remat=vgg_remat)
    return jax.value_and_grad(total, has_aux=True)(output)


@pytest.mark.slow
def test_bfloat16_vgg_stays_close_to_float32_on_photographs(random_vgg):
    """Random VGG16 weights (no download here). Tolerances, about twice the largest measured
    error: each VGG term within 5 % (measured <= 2.4 %), the total within 2 % (<= 0.72 %), the
    gradient's cosine with float32's > 0.97 (>= 0.979). bfloat16 keeps 8 significant bits (a
    rounding of 2**-9 per activation); a term is a mean of feature differences, so its relative
    error grows as the output nears the target (style_comp, whose composite equals the target
    outside the holes, errs most); the L1 terms' gradient is the sign of each difference, and
    where differences are small (the blurred case) rounding flips the smallest ones' signs."""
    gt, mask, outputs = photo_batch()
    for name, output in outputs.items():
        (total32, want), grad32 = loss_and_output_gradient(output, gt, mask, random_vgg,
                                                           "float32")
        (total16, got), grad16 = loss_and_output_gradient(output, gt, mask, random_vgg,
                                                          "bfloat16")
        for term in losses.VGG_TERMS:
            assert got[term].dtype == jnp.float32
            np.testing.assert_allclose(float(got[term]), float(want[term]), rtol=5e-2,
                                       err_msg=f"{name}: {term}")
        for term in ("valid", "hole", "tv"):  # no VGG: the same float32 computation
            assert float(got[term]) == float(want[term]), (name, term)
        np.testing.assert_allclose(float(total16), float(total32), rtol=2e-2, err_msg=name)
        cosine = float(jnp.vdot(grad32, grad16) / jnp.linalg.norm(grad32)
                       / jnp.linalg.norm(grad16))
        assert cosine > 0.97, (name, cosine)


@pytest.mark.slow
def test_remat_gives_the_same_loss_and_gradient(random_vgg):
    gt, mask, outputs = photo_batch(32)
    output = outputs["flat_holes"]
    (total, terms), grad = loss_and_output_gradient(output, gt, mask, random_vgg, "float32")
    (total_r, terms_r), grad_r = loss_and_output_gradient(output, gt, mask, random_vgg,
                                                          "float32", vgg_remat=True)
    np.testing.assert_allclose(float(total_r), float(total), rtol=1e-6)
    for term in terms:
        np.testing.assert_allclose(float(terms_r[term]), float(terms[term]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_r), np.asarray(grad), rtol=0,
                               atol=1e-6 * float(jnp.max(jnp.abs(grad))))


def test_remat_recomputes_vgg_in_the_backward_pass(random_vgg):
    """With remat the compiled gradient runs VGG16's convolutions again: more of them."""
    out, gt, mask = make_inputs(0)

    def conv_count(remat):
        fn = jax.grad(lambda o: losses.inpainting_loss(o, gt, mask, random_vgg, PAPER_WEIGHTS,
                                                       vgg_remat=remat)[0])
        return jax.jit(fn).lower(out).as_text().count("convolution")
    assert conv_count(True) > conv_count(False)


def test_loss_dtype_choices_and_a_bad_dtype(random_vgg):
    from pconv_jax import config as config_lib
    assert set(config_lib.CHOICES["loss.dtype"]) == set(losses.VGG_DTYPES)
    out, gt, mask = make_inputs(0)
    with pytest.raises(ValueError, match="vgg_dtype must be one of"):
        losses.inpainting_loss(out, gt, mask, random_vgg, vgg_dtype="float16")
