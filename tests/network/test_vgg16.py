"""VGG16 features and weight loading, checked against a NumPy float64 conv stack."""

import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from pconv_jax.network import vgg16 as vgg
from pconv_jax.weights import vgg16_files
from tests.helpers.torch_files import (
    ALL_LAYERS,
    LAYERS,
    random_torch_state,
    write_keras_h5,
    write_torch_legacy,
    write_torch_zip,
)

POOL_AFTER = {1, 3, 6}
BLOCK_ENDS = {1, 3, 6, 9, 12}


# --------------------------------------------------------------------------- references


def reference_features(state, images, preprocessing="torch"):
    """NumPy float64 VGG16 pool1..pool3 from OIHW weights (cross-correlation, zero pad 1)."""
    x = np.asarray(images, np.float64)
    if preprocessing == "torch":
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    else:  # Caffe: BGR, 0..255, minus BGR means
        x = x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])
    pools = []
    for i, (index, _, _, _) in enumerate(LAYERS):
        w = state[f"features.{index}.weight"].astype(np.float64)
        b = state[f"features.{index}.bias"].astype(np.float64)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3),
                                                           axis=(1, 2))  # N,H,W,C,3,3
        x = np.maximum(np.einsum("nhwcij,ocij->nhwo", windows, w) + b, 0.0)
        if i in POOL_AFTER:
            n, h, wd, c = x.shape
            x = x.reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
            pools.append(x)
    return pools


def reference_relus(state, inputs):
    """NumPy float64 relu1_2 .. relu5_3 of inputs taken as they are (no preprocessing); torch's
    2x2 max pool floors odd sizes."""
    x = np.asarray(inputs, np.float64)
    relus = []
    for i, (index, _, _, _) in enumerate(ALL_LAYERS):
        if i - 1 in BLOCK_ENDS:
            n, h, wd, c = x.shape
            x = x[:, : h // 2 * 2, : wd // 2 * 2].reshape(n, h // 2, 2, wd // 2, 2, c).max(
                axis=(2, 4))
        w = state[f"features.{index}.weight"].astype(np.float64)
        b = state[f"features.{index}.bias"].astype(np.float64)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
        x = np.maximum(np.einsum("nhwcij,ocij->nhwo", windows, w) + b, 0.0)
        if i in BLOCK_ENDS:
            relus.append(x)
    return relus


def assert_features_match(params, state, preprocessing, images):
    got = vgg.vgg16_features(params, jnp.asarray(images, jnp.float32))
    want = reference_features(state, images, preprocessing)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4 * np.abs(w).max())


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(2, 8, 8, 3))


# --------------------------------------------------------------------------- torch file writers
# torch is not installed: the writers pickle with stand-in `torch` modules registered only
# while pickling, so the files hold the very GLOBAL opcodes torch.save writes.


def test_random_vgg16_feature_shapes_256_and_512():
    params = vgg.random_vgg16(jax.random.key(0))
    for size in (256, 512):
        pools = jax.eval_shape(vgg.vgg16_features, params,
                               jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
        assert [p.shape for p in pools] == [(2, size // 2, size // 2, 64),
                                            (2, size // 4, size // 4, 128),
                                            (2, size // 8, size // 8, 256)]


def test_weights_get_no_gradient(images):
    # (Gradients do reach the images: tests/loss/test_losses.py differentiates the loss
    # through VGG.)
    params = vgg.random_vgg16(jax.random.key(0))

    def f(p):
        return sum(jnp.sum(t) for t in vgg.vgg16_features(p, jnp.asarray(images, jnp.float32)))

    g_params = jax.jit(jax.grad(f))(params)
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree_util.tree_leaves(g_params))


@pytest.mark.parametrize("writer", [write_torch_zip, write_torch_legacy], ids=["zip", "legacy"])
def test_torch_pth_loads_and_matches_reference(tmp_path, images, writer):
    state = random_torch_state()
    path = tmp_path / "vgg16-397923af.pth"
    writer(path, state)
    params = vgg16_files.load_vgg16(path)
    assert params.preprocessing == "torch"
    assert_features_match(params, state, "torch", images)


def test_timm_safetensors_loads_and_matches_reference(tmp_path, images):
    state = random_torch_state(2)
    save_file(dict(state), str(tmp_path / "model.safetensors"))
    params = vgg16_files.load_vgg16(tmp_path / "model.safetensors")
    assert params.preprocessing == "torch"
    assert_features_match(params, state, "torch", images)


@pytest.mark.parametrize("keras2_names", [False, True], ids=["W_1:0", "kernel:0"])
def test_keras_h5_loads_with_caffe_preprocessing(tmp_path, images, keras2_names):
    state = random_torch_state(3)
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(path, state, keras2_names)
    params = vgg16_files.load_vgg16(path)
    assert params.preprocessing == "caffe"
    assert_features_match(params, state, "caffe", images)


@pytest.mark.parametrize("source", ["pth", "h5"])
def test_convert_cli_round_trips_through_npz(tmp_path, source):
    state = random_torch_state(4)
    src = tmp_path / f"weights.{source}"
    (write_torch_zip(src, state) if source == "pth" else write_keras_h5(src, state, False))
    dst = tmp_path / "vgg16.npz"
    vgg16_files.main(["vgg16_files", "convert", str(src), str(dst)])  # argv as absl passes it
    original, converted = vgg16_files.load_vgg16(src), vgg16_files.load_vgg16(dst)
    assert (converted.preprocessing == original.preprocessing
            == ("torch" if source == "pth" else "caffe"))
    for a, b in zip(jax.tree_util.tree_leaves(original), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_crafted_pth_cannot_run_code(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"features.0.weight": _RunsShell(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
            zf.writestr("archive/version", "3\n")
    else:
        path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load global"):
        vgg16_files.load_vgg16(path)
    assert not marker.exists()


def test_missing_key_is_named(tmp_path):
    state = random_torch_state()
    del state["features.10.weight"]
    save_file(dict(state), str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match=r"features\.10\.weight"):
        vgg16_files.load_vgg16(tmp_path / "model.safetensors")


def test_wrong_shape_is_named(tmp_path):
    state = random_torch_state()
    state["features.5.bias"] = np.zeros(64, np.float32)
    write_torch_zip(tmp_path / "w.pth", state)
    with pytest.raises(ValueError, match=r"features\.5\.bias.*\(64,\).*\(128,\)"):
        vgg16_files.load_vgg16(tmp_path / "w.pth")


def test_missing_file_says_where_weights_come_from(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        vgg16_files.load_vgg16(tmp_path / "nope.pth")
    for needle in ("config.loss.vgg_weights", "vgg16-397923af.pth", "download.pytorch.org/models",
                   "vgg16.tv_in1k"):
        assert needle in str(err.value)


def test_unknown_format_is_an_error(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"hello, not weights at all")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        vgg16_files.load_vgg16(tmp_path / "w.bin")


# --------------------------------------------------------------------------- conv4 / conv5 (LPIPS)


@pytest.fixture(scope="module")
def full_state():
    """All 13 convs (59 MB float32), as torchvision's file holds them."""
    return random_torch_state(5, ALL_LAYERS)


@pytest.fixture(scope="module")
def full_pth(tmp_path_factory, full_state):
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    write_torch_legacy(path, full_state)
    return path


@pytest.mark.slow
def test_relu_features_of_all_13_convs_match_reference(full_pth, full_state):
    params = vgg16_files.load_vgg16(full_pth, blocks=5)
    assert len(params.convs) == 13 and vgg.num_blocks(params) == 5
    # 18 x 22 pools to 9 x 11, 4 x 5, 2 x 2, 1 x 1: odd sizes floor, as torch's pool.
    inputs = np.random.default_rng(6).normal(size=(2, 18, 22, 3))
    got = jax.jit(vgg.vgg16_relu_features)(params, jnp.asarray(inputs, jnp.float32))
    want = reference_relus(full_state, inputs)
    assert [g.shape for g in got] == [(2, 18, 22, 64), (2, 9, 11, 128), (2, 4, 5, 256),
                                      (2, 2, 2, 512), (2, 1, 1, 512)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4 * np.abs(w).max())


def test_loss_features_ignore_conv4_and_conv5(full_pth, images):
    """The loss's default load reads conv1_1..conv3_3 only, and pool1..pool3 are the same
    whether the params hold 7 convs or 13."""
    loss_params = vgg16_files.load_vgg16(full_pth)
    all_params = vgg16_files.load_vgg16(full_pth, blocks=5)
    assert sorted(loss_params.convs) == sorted(name for name, *_ in vgg.block_convs(3))
    x = jnp.asarray(images, jnp.float32)
    for a, b in zip(vgg.vgg16_features(loss_params, x), vgg.vgg16_features(all_params, x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "h5"])
def test_every_format_loads_blocks_4_and_5(tmp_path, full_state, fmt):
    from tests.weights.test_file_safety import write_format  # it imports this module
    path = tmp_path / f"w.{fmt}"
    write_format(path, full_state, fmt)
    params = vgg16_files.load_vgg16(path, blocks=5)
    assert params.preprocessing == ("caffe" if fmt == "h5" else "torch")
    for name, index, _, _, _ in vgg.VGG16_CONVS:
        np.testing.assert_array_equal(np.asarray(params.convs[name]["kernel"]),
                                      full_state[f"features.{index}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(np.asarray(params.convs[name]["bias"]),
                                      full_state[f"features.{index}.bias"])


def test_convert_keeps_all_13_convs(tmp_path, full_pth, capsys):
    dst = tmp_path / "vgg16.npz"
    vgg16_files.main(["vgg16_files", "convert", str(full_pth), str(dst)])
    assert "blocks 1..5" in capsys.readouterr().out
    original = vgg16_files.load_vgg16(full_pth, blocks=5)
    converted = vgg16_files.load_vgg16(dst, blocks=5)
    for a, b in zip(jax.tree_util.tree_leaves(original), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_a_file_without_conv4_and_conv5_is_a_clear_error_for_lpips(tmp_path, fmt):
    # An .npz converted for the loss before conv4/conv5 were read holds conv1_1..conv3_3 only.
    state = random_torch_state(7)
    path = tmp_path / f"old.{fmt}"
    if fmt == "npz":  # as `convert` wrote it from a file read for the loss
        write_torch_zip(tmp_path / "src.pth", state)
        vgg16_files.save_npz(vgg16_files.load_vgg16(tmp_path / "src.pth"), path)
    else:
        write_torch_zip(path, state)
    assert vgg.num_blocks(vgg16_files.load_vgg16(path)) == 3  # still fine for the loss
    with pytest.raises(KeyError) as err:
        vgg16_files.load_vgg16(path, blocks=5)
    message = str(err.value)
    for needle in (str(path), "lacks conv4_1, conv4_2", "conv5_3", "convert",
                   "vgg16-397923af.pth"):
        assert needle in message


def test_relu_features_of_more_blocks_than_loaded_is_an_error(images):
    params = vgg.random_vgg16(jax.random.key(0))
    assert vgg.num_blocks(params) == 3
    with pytest.raises(ValueError, match=r"blocks 1\.\.3 only.*load_vgg16\(path, blocks=5\)"):
        vgg.vgg16_relu_features(params, jnp.asarray(images, jnp.float32))
    relus = vgg.vgg16_relu_features(params, jnp.asarray(images, jnp.float32), blocks=3)
    assert [r.shape[-1] for r in relus] == [64, 128, 256]


def test_blocks_out_of_range_is_an_error(full_pth):
    with pytest.raises(ValueError, match=r"blocks 1\.\.5; got 6"):
        vgg16_files.load_vgg16(full_pth, blocks=6)
