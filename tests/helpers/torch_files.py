"""Writers of torch and Keras weight files without torch: valid state dicts (`write_torch_zip`,
`write_torch_legacy`, `write_keras_h5`) and crafted pickles around given tensors
(`write_checkpoint`). torch is not installed: stand-in `torch` modules are registered only while
pickling, so the files hold the very GLOBAL opcodes torch.save writes."""

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile

import h5py
import numpy as np

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


# --------------------------------------------------------------------------- crafted files


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, self.args + (False, collections.OrderedDict())


def pickle_checkpoint(obj, legacy):
    """The pickle of `obj`, storages as persistent ids ('storage', FloatStorage, key, ...)."""
    buf = io.BytesIO()
    with fake_torch_modules() as torch_mod:
        pickler = pickle.Pickler(buf, protocol=2)

        def persistent_id(o):
            if isinstance(o, Storage):
                record = ("storage", torch_mod.FloatStorage, o.key, "cpu", o.numel)
                return record + (None,) if legacy else record
            return None

        pickler.persistent_id = persistent_id
        pickler.dump(obj)
    return buf.getvalue()


def write_zip(path, pickled, data, pkl_name="archive/data.pkl"):
    """torch.save's zip layout around pickle bytes; `data` maps storage key -> bytes."""
    prefix = pkl_name[: -len("data.pkl")]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(pkl_name, pickled)
        zf.writestr(prefix + "byteorder", "little")
        for key, raw in data.items():
            zf.writestr(f"{prefix}data/{key}", raw)


def write_legacy(path, pickled, data):
    """torch's pre-1.6 stream around pickle bytes; `data` maps storage key -> float32 bytes."""
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(pickled)
        pickle.dump(sorted(data), f, protocol=2)
        for key in sorted(data):
            f.write(struct.pack("<q", len(data[key]) // 4))
            f.write(data[key])


def write_checkpoint(path, layout, tensors, data):
    """A checkpoint {name: Tensor} in `layout` ('zip' or 'legacy')."""
    pickled = pickle_checkpoint(collections.OrderedDict(tensors), layout == "legacy")
    (write_zip if layout == "zip" else write_legacy)(path, pickled, data)
