"""VGG16 weight files -> `VGGParams`, and the `convert` command.

The format is detected from the file's content:

- torchvision `vgg16-397923af.pth` (legacy pickle stream or zip archive), read by a
  restricted unpickler that never imports torch nor executes code from the file;
- timm `vgg16.tv_in1k` `model.safetensors`;
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (Caffe preprocessing);
- our own `.npz` (write one with `python -m pconv_jax.weights.vgg16_files convert SRC DST.npz`).

The loss needs blocks 1..3 (conv1_1..conv3_3), LPIPS all 5: `load_vgg16(path, blocks=5)`.
torchvision's file, timm's and Keras' `notop` file hold all 13 convs; an `.npz` may hold
blocks 1..3 only (enough for the loss).
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from absl import app

from pconv_jax import files
from pconv_jax.network.vgg16 import (
    LOSS_BLOCKS,
    NUM_BLOCKS,
    VGG16_CONVS,
    VGGParams,
    block_convs,
    make_params,
    num_blocks,
)
from pconv_jax.weights import checks, torch_pickle

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
        with checks.open_zip(path) as zf:
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
        "a timm .safetensors, a Keras .h5 or a .npz written by "
        "`python -m pconv_jax.weights.vgg16_files convert`."
    )


def _check_shape(key: str, shape: Sequence[int], expected: tuple[int, ...], path: str) -> None:
    if tuple(shape) != expected:
        raise ValueError(
            f"VGG16 weights {path}: '{key}' has shape {tuple(shape)}, expected {expected}.")


def _missing(key: str, path: str) -> KeyError:
    return KeyError(f"VGG16 weights {path}: missing key '{key}' (is this a VGG16 checkpoint?).")


Conv = tuple[str, int, str, int, int]  # an entry of VGG16_CONVS


def _convs_to_read(blocks: int | None, held: Collection[str], path: str) -> tuple[Conv, ...]:
    """The convs of blocks 1..`blocks` (None: of every complete block the file holds, at
    least the loss's 3); `held` names the convs the file holds. The loss's blocks are left
    to the readers' missing-key errors; a file without the deeper blocks asked for gets an
    error saying how to get them."""
    if blocks is None:
        blocks = LOSS_BLOCKS
        while blocks < NUM_BLOCKS and all(c[0] in held for c in block_convs(blocks + 1)):
            blocks += 1
    convs = block_convs(blocks)
    absent = [c[0] for c in convs[len(block_convs(LOSS_BLOCKS)):] if c[0] not in held]
    if absent:
        raise KeyError(
            f"VGG16 weights {path}: blocks 1..{blocks} are needed but the file lacks "
            f"{', '.join(absent)}. (An .npz converted for the loss by an older version holds "
            "conv1_1..conv3_3 only.) Convert the full torchvision file again with `python -m "
            "pconv_jax.weights.vgg16_files convert vgg16-397923af.pth DST.npz`, or name "
            "torchvision's file itself.")
    return convs


def _torch_shapes(convs: Sequence[Conv]) -> dict[str, tuple[int, ...]]:
    """torchvision/timm layout: features.N.weight (OIHW), features.N.bias."""
    shapes = {}
    for _, index, _, c_in, c_out in convs:
        shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{index}.bias"] = (c_out,)
    return shapes


def _torch_held(keys: Collection[str]) -> set[str]:
    return {name for name, index, *_ in VGG16_CONVS if f"features.{index}.weight" in keys}


def _from_torch_layout(arrays: Mapping[str, np.ndarray], convs_to_read: Sequence[Conv],
                       path: str) -> VGGParams:
    convs = {}
    for name, index, _, _, _ in convs_to_read:
        w_key, b_key = f"features.{index}.weight", f"features.{index}.bias"
        w, b = arrays[w_key], arrays[b_key]
        checks.check_weights(w_key, w, path)
        checks.check_weights(b_key, b, path)
        convs[name] = {"kernel": np.transpose(w, (2, 3, 1, 0)), "bias": b}
    return make_params(convs, "torch")


def _read_torch(path: str, fmt: str, blocks: int | None) -> VGGParams:
    """Checks keys and shapes on the tensor records, then reads only the tensors needed."""
    if fmt == "torch_zip":
        state = torch_pickle.load_zip_records(path)
    else:
        state = torch_pickle.load_legacy_records(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}.")
    convs = _convs_to_read(blocks, _torch_held(state), path)
    records = {}
    for key, shape in _torch_shapes(convs).items():
        if key not in state:
            raise _missing(key, path)
        if not isinstance(state[key], torch_pickle.TensorRecord):
            raise checks.WeightsFileError(f"VGG16 weights {path}: '{key}' is not a tensor.")
        _check_shape(key, state[key].shape, shape, path)
        records[key] = state[key]
    return _from_torch_layout(torch_pickle.materialize(records), convs, path)


def _read_safetensors(path: str, blocks: int | None) -> VGGParams:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "np") as f:
            keys = set(f.keys())
            convs = _convs_to_read(blocks, _torch_held(keys), path)
            shapes = _torch_shapes(convs)
            for key, shape in shapes.items():
                if key not in keys:
                    raise _missing(key, path)
                _check_shape(key, f.get_slice(key).get_shape(), shape, path)
            arrays = {key: f.get_tensor(key) for key in shapes}
    except SafetensorError as err:
        raise checks.WeightsFileError(f"{path}: not a valid safetensors file ({err}).") from None
    return _from_torch_layout(arrays, convs, path)


def _h5_member(group, name: str, path: str):
    """`group[name]`, following hard links only: soft and external links (which can lead to
    other files) are refused, as is a dataset whose data lives outside the file."""
    import h5py

    obj = group
    for part in name.split("/"):
        link = obj.get(part, getlink=True) if part and isinstance(obj, h5py.Group) else None
        if link is None:
            raise KeyError(f"VGG16 weights {path}: missing '{name}' in '{group.name}'.")
        if not isinstance(link, h5py.HardLink):
            raise checks.WeightsFileError(
                f"{path}: '{name}' is reached through a {type(link).__name__}; weight files "
                "hold their data themselves, links are refused.")
        obj = obj[part]
    if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
        raise checks.WeightsFileError(
            f"{path}: dataset '{obj.name}' keeps its data outside the file (external storage "
            "or a virtual dataset); refusing to read it.")
    return obj


def _h5_array(group, name: str, shape: tuple[int, ...], path: str) -> np.ndarray:
    import h5py

    dataset = _h5_member(group, name, path)
    if not isinstance(dataset, h5py.Dataset):
        raise checks.WeightsFileError(f"{path}: '{dataset.name}' is not a dataset.")
    key = dataset.name.lstrip("/")
    _check_shape(key, dataset.shape, shape, path)
    if dataset.dtype.kind != "f":
        raise checks.WeightsFileError(f"{path}: '{key}' has dtype {dataset.dtype}, expected float.")
    array = np.asarray(dataset[()])
    checks.check_weights(key, array, path)
    return array


def _read_keras_h5(path: str, blocks: int | None) -> VGGParams:
    """Keras weights: a group per layer (block1_conv1, ...), its attribute `weight_names`
    listing [kernel (HWIO), bias] datasets relative to the group."""
    import h5py  # only needed for this format

    convs = {}
    with h5py.File(path, "r") as f:
        # `name in group` would resolve an external link (open the other file): look at links.
        has_root = f.get("model_weights", getlink=True) is not None
        root = _h5_member(f, "model_weights", path) if has_root else f
        held = {name for name, _, layer, *_ in VGG16_CONVS
                if root.get(layer, getlink=True) is not None}
        for name, _, layer, c_in, c_out in _convs_to_read(blocks, held, path):
            if root.get(layer, getlink=True) is None:
                raise KeyError(f"VGG16 weights {path}: missing layer group '{layer}'.")
            group = _h5_member(root, layer, path)
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in group.attrs.get("weight_names", [])]
            if len(names) != 2:
                raise KeyError(f"VGG16 weights {path}: layer '{layer}' should list 2 "
                               f"weight_names, got {names}.")
            kernel = _h5_array(group, names[0], (3, 3, c_in, c_out), path)
            bias = _h5_array(group, names[1], (c_out,), path)
            convs[name] = {"kernel": kernel, "bias": bias}
    return make_params(convs, "caffe")


def _npz_array(zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], kind: str,
               path: str) -> np.ndarray:
    """One array of an .npz, its header (shape, dtype) checked before its data is read."""
    member = f"{key}.npy"
    if member not in zf.namelist():
        raise _missing(key, path)
    with zf.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            found, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            found, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise checks.WeightsFileError(
                f"{path}: '{key}' has unsupported .npy version {version}.")
    _check_shape(key, found, shape, path)
    if dtype.kind != kind:
        raise checks.WeightsFileError(f"{path}: '{key}' has dtype {dtype}, expected kind '{kind}'.")
    with zf.open(member) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _read_npz(path: str, blocks: int | None) -> VGGParams:
    with checks.open_zip(path) as zf, checks.zip_read_errors(path):
        mode = str(_npz_array(zf, "preprocessing", (), "U", path))
        members = set(zf.namelist())
        held = {name for name, *_ in VGG16_CONVS if f"{name}/kernel.npy" in members}
        convs = {}
        for name, _, _, c_in, c_out in _convs_to_read(blocks, held, path):
            convs[name] = {
                "kernel": _npz_array(zf, f"{name}/kernel", (3, 3, c_in, c_out), "f", path),
                "bias": _npz_array(zf, f"{name}/bias", (c_out,), "f", path),
            }
    for name, conv in convs.items():
        for part, array in conv.items():
            checks.check_weights(f"{name}/{part}", array, path)
    return make_params(convs, mode)


def load_vgg16(path: str | os.PathLike, blocks: int | None = LOSS_BLOCKS) -> VGGParams:
    """Loads the VGG16 convs of blocks 1..`blocks`; the file format is detected from its content.

    `blocks`: 3 (conv1_1..conv3_3, what the loss needs), 5 (all 13 convs, for LPIPS), or
    None for every complete block the file holds (at least 3).

    Raises FileNotFoundError (saying where to get the weights) for a missing file,
    KeyError naming the key for a missing weight, ValueError for a wrong shape, an
    unknown format, non-finite weights or a corrupt or unsafe file (`WeightsFileError`),
    pickle.UnpicklingError for a .pth that holds anything but tensors. Shapes are checked
    before any weights are read, and only the weights needed are read.
    """
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"VGG16 weights file not found: {path!r}. {WEIGHTS_HELP}")
    fmt = _detect_format(path)
    if blocks is not None:
        block_convs(blocks)  # checks the range
    if fmt == "keras_h5":
        return _read_keras_h5(path, blocks)
    if fmt == "npz":
        return _read_npz(path, blocks)
    if fmt == "safetensors":
        return _read_safetensors(path, blocks)
    return _read_torch(path, fmt, blocks)


def save_npz(params: VGGParams, path: str | os.PathLike) -> None:
    """Writes params (every conv they hold, and their preprocessing mode) to our `.npz`
    format."""
    arrays = {f"{n}/{k}": np.asarray(v) for n, c in params.convs.items() for k, v in c.items()}
    with files.atomic_output(path, "wb") as f:  # a file object: np.savez adds no '.npz'
        np.savez(f, preprocessing=np.asarray(params.preprocessing), **arrays)


def main(argv: Sequence[str]) -> None:
    """`python -m pconv_jax.weights.vgg16_files convert SRC DST.npz`."""
    if len(argv) != 4 or argv[1] != "convert":
        raise app.UsageError("usage: python -m pconv_jax.weights.vgg16_files convert SRC DST.npz "
                             "(SRC: a .pth, .safetensors, .h5 or .npz VGG16 file)")
    src, dst = argv[2], argv[3]
    params = load_vgg16(src, blocks=None)  # every conv the file holds: the loss's and LPIPS's
    save_npz(params, dst)
    print(f"wrote {dst} (VGG16 blocks 1..{num_blocks(params)}, "
          f"preprocessing: {params.preprocessing})")


if __name__ == "__main__":
    from pconv_jax import cli
    cli.run(main)
