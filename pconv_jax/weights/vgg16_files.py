"""VGG16 weight files -> `VGGParams`, and the `convert` command.

The format is detected from the file's content:

- torchvision `vgg16-397923af.pth` (legacy pickle stream or zip archive), read by a
  restricted unpickler that never imports torch nor executes code from the file;
- timm `vgg16.tv_in1k` `model.safetensors`;
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (Caffe preprocessing);
- our own `.npz` (write one with `python -m pconv_jax.weights.vgg16_files convert SRC DST.npz`).
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import Mapping, Sequence

import numpy as np
from absl import app

from pconv_jax.network.vgg16 import VGG16_CONVS, VGGParams, make_params
from pconv_jax.weights import torch_pickle

WEIGHTS_HELP = (
    "VGG16 weights are read from the file named by `config.loss.vgg_weights`. Get "
    "torchvision's `vgg16-397923af.pth` from https://download.pytorch.org/models/"
    "vgg16-397923af.pth, or timm's `vgg16.tv_in1k` `model.safetensors` from the Hugging "
    "Face hub (https://huggingface.co/timm/vgg16.tv_in1k), and optionally convert it with "
    "`python -m pconv_jax.weights.vgg16_files convert SRC DST.npz`."
)

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
        "a timm .safetensors, a Keras .h5 or a .npz written by `python -m pconv_jax.weights.vgg16_files convert`."
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
    return make_params(convs, "torch")


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
    return make_params(convs, "caffe")


def _read_npz(path: str) -> VGGParams:
    with np.load(path, allow_pickle=False) as data:
        mode = str(_get(data, "preprocessing", path))
        convs = {}
        for name, _, _, c_in, c_out in VGG16_CONVS:
            kernel, bias = _get(data, f"{name}/kernel", path), _get(data, f"{name}/bias", path)
            _check_shape(f"{name}/kernel", kernel, (3, 3, c_in, c_out), path)
            _check_shape(f"{name}/bias", bias, (c_out,), path)
            convs[name] = {"kernel": kernel, "bias": bias}
    return make_params(convs, mode)



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


def main(argv: Sequence[str]) -> None:
    """`python -m pconv_jax.weights.vgg16_files convert SRC DST.npz`."""
    if len(argv) != 4 or argv[1] != "convert":
        raise app.UsageError("usage: python -m pconv_jax.weights.vgg16_files convert SRC DST.npz "
                             "(SRC: a .pth, .safetensors, .h5 or .npz VGG16 file)")
    src, dst = argv[2], argv[3]
    params = load_vgg16(src)
    save_npz(params, dst)
    print(f"wrote {dst} (preprocessing: {params.preprocessing})")


if __name__ == "__main__":
    from pconv_jax import cli
    cli.run(main)
