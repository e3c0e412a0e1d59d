"""Frozen VGG16 feature extractor (pool1, pool2, pool3) and safe weight loading.

The network is a pure function over a parameter pytree (`VGGParams`), so the weights
never enter an optimizer and get no gradient. Weights come from a file the user names
(`config.loss.vgg_weights`); the format is detected from the file's content:

- torchvision `vgg16-397923af.pth` (legacy pickle stream or zip archive), read by a
  restricted unpickler that never imports torch nor executes code from the file;
- timm `vgg16.tv_in1k` `model.safetensors`;
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (Caffe preprocessing);
- our own `.npz` (write one with `python -m pconv_jax.vgg convert SRC DST.npz`).
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct as flax_struct

# (our name, torchvision index in `features`, Keras layer name, C_in, C_out) of each conv.
VGG16_CONVS: tuple[tuple[str, int, str, int, int], ...] = (
    ("conv1_1", 0, "block1_conv1", 3, 64),
    ("conv1_2", 2, "block1_conv2", 64, 64),
    ("conv2_1", 5, "block2_conv1", 64, 128),
    ("conv2_2", 7, "block2_conv2", 128, 128),
    ("conv3_1", 10, "block3_conv1", 128, 256),
    ("conv3_2", 12, "block3_conv2", 256, 256),
    ("conv3_3", 14, "block3_conv3", 256, 256),
)
_BLOCKS = (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"))

# 'torch': RGB in [0, 1], ImageNet mean/std (torchvision, timm).
# 'caffe': BGR in [0, 255] minus the BGR channel means (Keras' original VGG16 weights).
PREPROCESSING_MODES = ("torch", "caffe")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

WEIGHTS_HELP = (
    "VGG16 weights are read from the file named by `config.loss.vgg_weights`. Get "
    "torchvision's `vgg16-397923af.pth` from https://download.pytorch.org/models/"
    "vgg16-397923af.pth, or timm's `vgg16.tv_in1k` `model.safetensors` from the Hugging "
    "Face hub (https://huggingface.co/timm/vgg16.tv_in1k), and optionally convert it with "
    "`python -m pconv_jax.vgg convert SRC DST.npz`."
)


@flax_struct.dataclass
class VGGParams:
    """Frozen VGG16 conv1_1..conv3_3 weights.

    Attributes:
      convs: {layer name: {'kernel': (3, 3, C_in, C_out) HWIO, 'bias': (C_out,)}}.
      preprocessing: 'torch' or 'caffe' (static: selects the input normalisation).
    """

    convs: dict[str, dict[str, jax.Array]]
    preprocessing: str = flax_struct.field(pytree_node=False, default="torch")


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


def preprocess(images: jax.Array, preprocessing: str) -> jax.Array:
    """Maps RGB images in [0, 1] (NHWC) to the input the VGG weights were trained on."""
    if preprocessing == "torch":
        mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
        std = jnp.asarray(IMAGENET_STD, images.dtype)
        return (images - mean) / std
    if preprocessing == "caffe":
        bgr = images[..., ::-1] * 255.0
        return bgr - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
    raise ValueError(f"Unknown VGG preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")


def _conv3x3_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jax.nn.relu(y + bias.astype(x.dtype))


def _max_pool2x2(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params: VGGParams, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the (pool1, pool2, pool3) activations of RGB images in [0, 1], NHWC.

    Shapes for an (N, H, W, 3) input: (N, H/2, W/2, 64), (N, H/4, W/4, 128),
    (N, H/8, W/8, 256). The computation runs in the images' dtype. No gradient
    reaches the weights (they are frozen); gradients do flow to the images.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"vgg16_features expects RGB images (N, H, W, 3); got shape {images.shape}.")
    convs = jax.lax.stop_gradient(params.convs)
    x = preprocess(images, params.preprocessing)
    pools = []
    for block in _BLOCKS:
        for name in block:
            x = _conv3x3_relu(x, convs[name]["kernel"], convs[name]["bias"])
        x = _max_pool2x2(x)
        pools.append(x)
    return tuple(pools)


def random_vgg16(key: jax.Array, preprocessing: str = "torch") -> VGGParams:
    """A VGG16 with RANDOM (He-normal) weights: for tests and benchmarks only.

    Its features mean nothing; never use it for a real perceptual or style loss.
    `key` must be concrete (call it outside `jit`).
    """
    # NumPy draws from the key's bits: XLA takes seconds to compile threefry for 1.7M samples.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    convs = {}
    for name, _, _, c_in, c_out in VGG16_CONVS:
        std = np.sqrt(2.0 / (9 * c_in))
        convs[name] = {
            "kernel": (std * rng.standard_normal((3, 3, c_in, c_out))).astype(np.float32),
            "bias": np.zeros((c_out,), np.float32),
        }
    return _as_params(convs, preprocessing)


# ---------------------------------------------------------------------------
# Safe reading of torch checkpoints (no torch, no code execution)
# ---------------------------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only records the element dtype."""

    __slots__ = ("dtype",)  # no __dict__: a pickle BUILD cannot add state

    def __init__(self, dtype: type) -> None:
        self.dtype = np.dtype(dtype)


class _Storage:
    """A flat storage; `data` is filled from the archive (zip) or the stream (legacy)."""

    def __init__(self, dtype: np.dtype, numel: int) -> None:
        self.dtype, self.numel, self.data = dtype, numel, None


class _PendingTensor:
    """A tensor whose storage may not be read yet (legacy format stores data after the pickle)."""

    def __init__(self, storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.data
        if self.size and any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= flat.size:
            raise ValueError("Corrupt torch checkpoint: a tensor reaches past its storage.")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], self.size, [s * flat.itemsize for s in self.stride], writeable=False)
        return np.array(view)


class _TensorRebuilder:
    """Stands in for torch._utils._rebuild_tensor (storage, offset, size, stride) and
    _rebuild_tensor_v2 (+ requires_grad, backward_hooks[, metadata]); the extra arguments
    carry nothing we need."""

    __slots__ = ()

    def __call__(self, storage, storage_offset, size, stride, *unused) -> _PendingTensor:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("Tensor storage is not a checkpoint storage record.")
        return _PendingTensor(storage, int(storage_offset), size, stride)


# The only globals a weights pickle may name. Each lookup gets a fresh stand-in object, so a
# crafted pickle cannot alter state shared with later loads.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch._utils", "_rebuild_tensor"): _TensorRebuilder,
    ("torch._utils", "_rebuild_tensor_v2"): _TensorRebuilder,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    **{("torch", name): functools.partial(_StorageType, dtype) for name, dtype in _TORCH_STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuilding globals; anything else is refused."""

    def __init__(self, file: io.BufferedIOBase, load_storage: Callable[[tuple], _Storage] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            make = _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load global '{module}.{name}' from a weights file: only tensor "
                "data is accepted (the file may be malicious or not a plain state_dict)."
            ) from None
        return make()

    def persistent_load(self, pid: Any) -> _Storage:
        if self._load_storage is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"Unsupported persistent id in weights file: {pid!r}")
        return self._load_storage(pid)


def _storage_record(pid: tuple) -> tuple[_StorageType, str, int]:
    """(storage_type, key, numel) of ('storage', type, key, location, numel[, view_metadata])."""
    if len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType) or not isinstance(pid[1].dtype, np.dtype):
        raise pickle.UnpicklingError(f"Malformed storage record in weights file: {pid!r}")
    if len(pid) == 6 and pid[5] is not None:
        raise pickle.UnpicklingError("Storage views (legacy view_metadata) are not supported.")
    key = pid[2].decode("ascii") if isinstance(pid[2], bytes) else str(pid[2])
    return pid[1], key, int(pid[4])


def _to_numpy_tree(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy()
    if isinstance(obj, Mapping):
        return {k: _to_numpy_tree(v) for k, v in obj.items()}
    return obj


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    """torch.save's zip format: PREFIX/data.pkl, PREFIX/data/<key>, PREFIX/byteorder, ..."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path} is a zip file but not a torch checkpoint (no PREFIX/data.pkl).")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
        storages: dict[str, _Storage] = {}

        def load_storage(pid: tuple) -> _Storage:
            storage_type, key, numel = _storage_record(pid)
            if key not in storages:
                dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
                raw = zf.read(f"{prefix}data/{key}")
                storage = _Storage(dtype, numel)
                storage.data = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype)
                storages[key] = storage
            return storages[key]

        with zf.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(io.BufferedReader(f), load_storage).load()
    return _to_numpy_tree(obj)


def _read_torch_legacy(path: str) -> dict[str, np.ndarray]:
    """torch's pre-1.6 format: pickles of magic, protocol, sys_info, the object, the storage
    keys, then per storage an 8-byte element count and the raw little-endian data."""
    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
        storage_type, key, numel = _storage_record(pid)
        return storages.setdefault(key, _Storage(storage_type.dtype, numel))

    with open(path, "rb") as f:
        header = [_RestrictedUnpickler(f, None).load() for _ in range(3)]
        if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
            raise ValueError(f"{path} is not a torch checkpoint (bad magic number or protocol).")
        if isinstance(header[2], dict) and not header[2].get("little_endian", True):
            raise ValueError(f"{path} was saved on a big-endian machine; not supported.")
        obj = _RestrictedUnpickler(f, load_storage).load()
        keys = _RestrictedUnpickler(f, None).load()
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise ValueError(f"{path}: corrupt checkpoint, storage '{key}' is never used.")
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = storage.numel * storage.dtype.itemsize
            raw = f.read(nbytes)
            # The record header is the element count (a byte count is tolerated too).
            if numel not in (storage.numel, nbytes) or len(raw) != nbytes:
                raise ValueError(f"{path}: truncated or corrupt storage '{key}'.")
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return _to_numpy_tree(obj)


# ---------------------------------------------------------------------------
# Weight files -> VGGParams
# ---------------------------------------------------------------------------


def _detect_format(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras_h5"
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch_zip"
    if len(head) >= 9 and head[8:9] == b"{":  # u64 header length, then a JSON header
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len + 8 <= os.path.getsize(path):
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy stream
        return "torch_legacy"
    raise ValueError(
        f"Cannot tell the format of VGG16 weights file {path}: expected a torchvision .pth, "
        "a timm .safetensors, a Keras .h5 or a .npz written by `python -m pconv_jax.vgg convert`."
    )


def _check_shape(key: str, array: np.ndarray, expected: tuple[int, ...], path: str) -> None:
    if tuple(array.shape) != expected:
        raise ValueError(f"VGG16 weights {path}: '{key}' has shape {tuple(array.shape)}, expected {expected}.")


def _get(store: Mapping[str, np.ndarray], key: str, path: str) -> np.ndarray:
    if key not in store:
        raise KeyError(f"VGG16 weights {path}: missing key '{key}' (is this a VGG16 checkpoint?).")
    return np.asarray(store[key])


def _from_torch_state(state: Mapping[str, np.ndarray], path: str) -> VGGParams:
    """torchvision/timm layout: features.N.weight (OIHW), features.N.bias."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    convs = {}
    for name, index, _, c_in, c_out in VGG16_CONVS:
        w_key, b_key = f"features.{index}.weight", f"features.{index}.bias"
        w, b = _get(state, w_key, path), _get(state, b_key, path)
        _check_shape(w_key, w, (c_out, c_in, 3, 3), path)
        _check_shape(b_key, b, (c_out,), path)
        convs[name] = {"kernel": np.transpose(w, (2, 3, 1, 0)), "bias": b}
    return _as_params(convs, "torch")


def _read_keras_h5(path: str) -> VGGParams:
    """Keras weights: a group per layer (block1_conv1, ...), its attribute `weight_names`
    listing [kernel (HWIO), bias] datasets relative to the group."""
    import h5py  # only needed for this format

    convs = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name, _, layer, c_in, c_out in VGG16_CONVS:
            if layer not in root:
                raise KeyError(f"VGG16 weights {path}: missing layer group '{layer}'.")
            group = root[layer]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
            if len(names) != 2:
                raise KeyError(f"VGG16 weights {path}: layer '{layer}' should list 2 weight_names, got {names}.")
            kernel, bias = (np.asarray(group[n]) for n in names)
            _check_shape(f"{layer}/{names[0]}", kernel, (3, 3, c_in, c_out), path)
            _check_shape(f"{layer}/{names[1]}", bias, (c_out,), path)
            convs[name] = {"kernel": kernel, "bias": bias}
    return _as_params(convs, "caffe")


def _read_npz(path: str) -> VGGParams:
    with np.load(path, allow_pickle=False) as data:
        mode = str(_get(data, "preprocessing", path))
        convs = {}
        for name, _, _, c_in, c_out in VGG16_CONVS:
            kernel, bias = _get(data, f"{name}/kernel", path), _get(data, f"{name}/bias", path)
            _check_shape(f"{name}/kernel", kernel, (3, 3, c_in, c_out), path)
            _check_shape(f"{name}/bias", bias, (c_out,), path)
            convs[name] = {"kernel": kernel, "bias": bias}
    return _as_params(convs, mode)


def _as_params(convs: Mapping[str, Mapping[str, np.ndarray]], preprocessing: str) -> VGGParams:
    if preprocessing not in PREPROCESSING_MODES:
        raise ValueError(f"Unknown VGG preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")
    return VGGParams(
        convs={n: {k: jnp.asarray(v, jnp.float32) for k, v in c.items()} for n, c in convs.items()},
        preprocessing=preprocessing,
    )


def load_vgg16(path: str | os.PathLike) -> VGGParams:
    """Loads VGG16 conv1_1..conv3_3 weights; the file format is detected from its content.

    Raises FileNotFoundError (saying where to get the weights) for a missing file,
    KeyError naming the key for a missing weight, ValueError for a wrong shape or an
    unknown format, pickle.UnpicklingError for a .pth that holds anything but tensors.
    """
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"VGG16 weights file not found: {path!r}. {WEIGHTS_HELP}")
    fmt = _detect_format(path)
    if fmt == "keras_h5":
        return _read_keras_h5(path)
    if fmt == "npz":
        return _read_npz(path)
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return _from_torch_state(load_file(path), path)
    state = _read_torch_zip(path) if fmt == "torch_zip" else _read_torch_legacy(path)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}.")
    return _from_torch_state(state, path)


def save_npz(params: VGGParams, path: str | os.PathLike) -> None:
    """Writes params (and their preprocessing mode) to our `.npz` format."""
    arrays = {f"{n}/{k}": np.asarray(v) for n, c in params.convs.items() for k, v in c.items()}
    with open(path, "wb") as f:  # a file object keeps np.savez from appending '.npz'
        np.savez(f, preprocessing=np.asarray(params.preprocessing), **arrays)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m pconv_jax.vgg convert SRC DST.npz`."""
    parser = argparse.ArgumentParser(prog="python -m pconv_jax.vgg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a .pth/.safetensors/.h5 VGG16 file to .npz")
    convert.add_argument("src")
    convert.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        params = load_vgg16(args.src)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as err:
        parser.exit(1, f"error: {err}\n")
    save_npz(params, args.dst)
    print(f"Wrote {args.dst} (preprocessing: {params.preprocessing}).", file=sys.stderr)


if __name__ == "__main__":
    main()
