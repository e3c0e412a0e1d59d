"""Reads PyTorch `.pth` state dicts without torch and without running code from the file.

Both of torch's layouts: the zip archive of `torch.save` (>= 1.6) and the legacy pickle stream
(what torchvision's `vgg16-397923af.pth` is). A restricted unpickler accepts only the
tensor-rebuilding globals (`torch._utils._rebuild_tensor[_v2]`, `collections.OrderedDict`,
`torch.*Storage`) and refuses anything else with `pickle.UnpicklingError`.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np


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


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
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


def read_torch_legacy(path: str) -> dict[str, np.ndarray]:
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
