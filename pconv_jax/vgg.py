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
import os
import pickle
import struct
import sys
import zipfile
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct as flax_struct

from pconv_jax import torch_pickle

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
    read = torch_pickle.read_torch_zip if fmt == "torch_zip" else torch_pickle.read_torch_legacy
    state = read(path)
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
