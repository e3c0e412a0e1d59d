"""VGG16 features and weight loading, checked against a NumPy float64 conv stack."""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from pconv_jax.network import vgg16 as vgg
from pconv_jax.weights import vgg16_files

# (torchvision index, Keras layer, C_in, C_out) of VGG16's 13 convs; blocks end after convs
# 2, 4, 7, 10 and 13. The loss reads conv1_1 .. conv3_3 (LAYERS), LPIPS all 13 (ALL_LAYERS).
ALL_LAYERS = [(0, "block1_conv1", 3, 64), (2, "block1_conv2", 64, 64),
              (5, "block2_conv1", 64, 128), (7, "block2_conv2", 128, 128),
              (10, "block3_conv1", 128, 256), (12, "block3_conv2", 256, 256),
              (14, "block3_conv3", 256, 256), (17, "block4_conv1", 256, 512),
              (19, "block4_conv2", 512, 512), (21, "block4_conv3", 512, 512),
              (24, "block5_conv1", 512, 512), (26, "block5_conv2", 512, 512),
              (28, "block5_conv3", 512, 512)]
LAYERS = ALL_LAYERS[:7]
POOL_AFTER = {1, 3, 6}
BLOCK_ENDS = {1, 3, 6, 9, 12}


# --------------------------------------------------------------------------- references


def random_torch_state(seed=0, layers=LAYERS):
    """A torchvision-style state_dict (OIHW float32) with random values and real shapes."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for index, _, c_in, c_out in layers:
        state[f"features.{index}.weight"] = (
            rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        state[f"features.{index}.bias"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    state["classifier.6.bias"] = rng.standard_normal(10).astype(np.float32)  # extra keys ignored
    return state


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


@contextlib.contextmanager
def fake_torch_modules():
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    def _rebuild_tensor(*args):
        raise AssertionError("only pickled, never called")

    for fn in (_rebuild_tensor_v2, _rebuild_tensor):
        fn.__module__, fn.__qualname__ = "torch._utils", fn.__name__
        setattr(utils_mod, fn.__name__, fn)
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    torch_mod.FloatStorage, torch_mod._utils = float_storage, utils_mod
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        yield torch_mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Storage:
    def __init__(self, key, data):
        self.key, self.data = key, np.ascontiguousarray(data, np.float32).ravel()


class _Tensor:
    def __init__(self, storage, offset, size, stride, legacy):
        self.args, self.legacy = (storage, offset, tuple(size), tuple(stride)), legacy

    def __reduce__(self):
        utils = sys.modules["torch._utils"]
        if self.legacy:  # pre-0.4 torch: _rebuild_tensor(storage, offset, size, stride)
            return utils._rebuild_tensor, self.args
        return utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict())


def _tensors_for(state, legacy):
    """Wraps arrays as pickled tensors, one storage each. In a VGG16 state, features.0.weight
    shares one storage with its bias (offset 64) and is stored input-channel-major
    (non-trivial strides), like a view."""
    view = "features.0.weight" in state
    tensors, storages = collections.OrderedDict(), []
    for name, array in state.items():
        if view and name in ("features.0.weight", "features.0.bias"):
            continue
        storage = _Storage(str(len(storages)), array)
        storages.append(storage)
        stride = [int(np.prod(array.shape[d + 1:])) for d in range(array.ndim)]
        tensors[name] = _Tensor(storage, 0, array.shape, stride, legacy)
    if view:
        w = state["features.0.weight"]  # (64, 3, 3, 3)
        shared = _Storage(str(len(storages)), np.concatenate(
            [state["features.0.bias"], w.transpose(1, 0, 2, 3).ravel()]))
        storages.append(shared)
        tensors["features.0.weight"] = _Tensor(shared, 64, w.shape, (9, 64 * 9, 3, 1), legacy)
        tensors["features.0.bias"] = _Tensor(shared, 0, (64,), (1,), legacy)
    tensors._metadata = collections.OrderedDict({"": {"version": 1}})  # as in real state_dicts
    return tensors, storages


def _pickle_with_storages(obj, torch_mod, legacy, file):
    pickler = pickle.Pickler(file, protocol=2)

    def persistent_id(o):
        if isinstance(o, _Storage):
            record = ("storage", torch_mod.FloatStorage, o.key, "cpu", o.data.size)
            return record + (None,) if legacy else record
        return None

    pickler.persistent_id = persistent_id
    pickler.dump(obj)


def write_torch_zip(path, state):
    """torch.save's zip layout (torch >= 1.6)."""
    with fake_torch_modules() as torch_mod:
        tensors, storages = _tensors_for(state, legacy=False)
        buf = io.BytesIO()
        _pickle_with_storages(tensors, torch_mod, False, buf)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.data.astype("<f4").tobytes())
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/.data/serialization_id", "0123456789")


def write_torch_legacy(path, state):
    """torch's pre-1.6 stream, the format of torchvision's vgg16-397923af.pth."""
    with fake_torch_modules() as torch_mod, open(path, "wb") as f:
        tensors, storages = _tensors_for(state, legacy=True)
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 8}}, f, protocol=2)
        _pickle_with_storages(tensors, torch_mod, True, f)
        keys = sorted(s.key for s in storages)
        pickle.dump(keys, f, protocol=2)
        by_key = {s.key: s for s in storages}
        for key in keys:
            f.write(struct.pack("<q", by_key[key].data.size))
            f.write(by_key[key].data.astype("<f4").tobytes())


def write_keras_h5(path, state, keras2_names):
    """Keras layout: a group per layer, attribute weight_names -> [kernel HWIO, bias]."""
    layers = [layer for layer in ALL_LAYERS if f"features.{layer[0]}.weight" in state]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input_1"] + [layer.encode() for _, layer, _, _ in layers]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for index, layer, _, _ in layers:
            names = ([f"{layer}/kernel:0", f"{layer}/bias:0"] if keras2_names
                     else [f"{layer}_W_1:0", f"{layer}_b_1:0"])
            g = f.create_group(layer)
            g.attrs["weight_names"] = [n.encode() for n in names]
            g.create_dataset(names[0], data=state[f"features.{index}.weight"].transpose(2, 3, 1, 0))
            g.create_dataset(names[1], data=state[f"features.{index}.bias"])


# --------------------------------------------------------------------------- tests


def test_random_vgg16_feature_shapes_256_and_512():
    params = vgg.random_vgg16(jax.random.key(0))
    for size in (256, 512):
        pools = jax.eval_shape(vgg.vgg16_features, params,
                               jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
        assert [p.shape for p in pools] == [(2, size // 2, size // 2, 64),
                                            (2, size // 4, size // 4, 128),
                                            (2, size // 8, size // 8, 256)]


def test_weights_get_no_gradient(images):
    # (Gradients do reach the images: tests/test_losses.py differentiates the loss through VGG.)
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
    from test_weights_security import write_format  # it imports this module
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
