"""Reads PyTorch `.pth` state dicts without torch and without running code from the file.

Both of torch's layouts: the zip archive of `torch.save` (>= 1.6) and the legacy pickle stream
(what torchvision's `vgg16-397923af.pth` is). Whatever the file holds:

- a restricted unpickler accepts only the tensor-rebuilding globals
  (`torch._utils._rebuild_tensor[_v2]`, `collections.OrderedDict`, `torch.*Storage`) and refuses
  anything else with `pickle.UnpicklingError`;
- each pickle is scanned before it is unpickled: every length it declares must be present in
  the file, and no value may nest deeper than `MAX_NESTING` (hashing a deeply nested tuple
  overflows the C stack);
- each storage must hold the bytes it declares, and each tensor record must stay inside its
  storage (non-negative offset, sizes and strides, last element in range) before any data is
  read;
- the tensors produced may take at most `MAX_BROADCAST` times the bytes of the storages they
  come from, plus 1 MiB: a stride-0 record can describe a tensor of any size from one element.

`load_zip_records`/`load_legacy_records` give the checkpoint as plain dicts, lists and tuples
with `TensorRecord` leaves (shape and dtype known, nothing copied) so that a caller can check
keys and shapes first; `materialize` then reads the data of the records it is given.
`read_torch_zip`/`read_torch_legacy` do both at once; `read_torch_file` picks the layout
from the file's first bytes (what the PConv checkpoint converter and LPIPS read). Refusals
raise `WeightsFileError` (a ValueError) naming the file.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from pconv_jax.weights.checks import WeightsFileError, open_zip, zip_read_errors

MAX_NESTING = 100  # a state dict nests about 5 levels deep
MAX_DIMS = 64  # NumPy's limit
MAX_BROADCAST = 4
_BROADCAST_SLACK = 1 << 20

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
    """A flat storage of `numel` elements of `dtype` (in the file's byte order), found at
    `location`: a zip member name, or the offset of its data in a legacy stream."""

    def __init__(self, path: str, dtype: np.dtype, numel: int, location: str | int | None) -> None:
        self.path, self.dtype, self.numel, self.location = path, dtype, numel, location

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class TensorRecord:
    """A tensor described by the file but not read yet: its storage, offset, size and stride,
    all checked to stay inside the storage."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, size, stride

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype.newbyteorder("=")

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def numpy(self, opened: Any = None) -> np.ndarray:
        """Reads the tensor (only the span of the storage it reaches) into a new array."""
        if self.size == 0:
            return np.zeros(self.shape, self.dtype)
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        item = self.storage.dtype.itemsize
        raw = _read_storage(self.storage, self.offset * item, span * item, opened)
        flat = np.frombuffer(raw, self.storage.dtype)
        # Safe: strides are >= 0 and every index sum((i_k) * s_k) <= span - 1 was checked.
        view = np.lib.stride_tricks.as_strided(
            flat, self.shape, [s * item for s in self.stride], writeable=False)
        return np.array(view, self.dtype)


def _read_storage(storage: _Storage, start: int, count: int, opened: Any) -> bytes:
    """`count` bytes from `start` of a storage; `opened` is the file's open ZipFile or file
    object, or None to open it here."""
    if opened is None:
        zipped = isinstance(storage.location, str)
        with (open_zip(storage.path) if zipped else open(storage.path, "rb")) as opened:
            return _read_storage(storage, start, count, opened)
    if isinstance(storage.location, str):
        with zip_read_errors(storage.path), opened.open(storage.location) as member:
            member.seek(start)
            raw = member.read(count)
    else:
        opened.seek(storage.location + start)
        raw = opened.read(count)
    if len(raw) != count:
        raise WeightsFileError(f"{storage.path}: a tensor storage is truncated.")
    return raw


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WeightsFileError(f"a tensor record's {what} is {value!r:.40}, not an integer")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise WeightsFileError(f"a tensor record's {what} is not a tuple of at most {MAX_DIMS} "
                               "integers")
    values = tuple(_int(v, what) for v in value)
    if any(abs(v) >= 1 << 62 for v in values):
        raise WeightsFileError(f"a tensor record's {what} {values} is out of range")
    return values


class _TensorRebuilder:
    """Stands in for torch._utils._rebuild_tensor (storage, offset, size, stride) and
    _rebuild_tensor_v2 (+ requires_grad, backward_hooks[, metadata]); the extra arguments
    carry nothing we need."""

    __slots__ = ()

    def __call__(self, storage, storage_offset, size, stride, *unused) -> TensorRecord:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError("Tensor storage is not a checkpoint storage record.")
        offset = _int(storage_offset, "storage offset")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if len(size) != len(stride):
            raise WeightsFileError(f"a tensor record has size {size} but stride {stride}")
        if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
            raise WeightsFileError(
                f"a tensor record has a negative offset, size or stride (offset {offset}, size "
                f"{size}, stride {stride}); torch never writes those")
        if math.prod(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= (
                storage.numel):
            raise WeightsFileError(
                f"a tensor record (offset {offset}, size {size}, stride {stride}) reaches past "
                f"its storage of {storage.numel} elements")
        return TensorRecord(storage, offset, size, stride)


# The only globals a weights pickle may name. Each lookup gets a fresh stand-in object, so a
# crafted pickle cannot alter state shared with later loads.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch._utils", "_rebuild_tensor"): _TensorRebuilder,
    ("torch._utils", "_rebuild_tensor_v2"): _TensorRebuilder,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    **{("torch", name): functools.partial(_StorageType, dtype)
       for name, dtype in _TORCH_STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuilding globals; anything else is refused."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], _Storage] | None) -> None:
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
        if (self._load_storage is None or not isinstance(pid, tuple) or not pid
                or pid[0] != "storage"):
            raise pickle.UnpicklingError(f"Unsupported persistent id in weights file: {pid!r:.80}")
        return self._load_storage(pid)


class _BoundedReader:
    """A file whose `read(n)` never asks for more than what is left (BufferedReader.read
    allocates `n` bytes up front, and a pickle declares `n`)."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self._f, self._end = f, end
        self.tell = f.tell

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._end - self._f.tell())
        return self._f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._f.readline(max(0, self._end - self._f.tell()))


# Opcodes that add to the container beneath them instead of building a new value.
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def _scan_pickle(f: Any) -> None:
    """Walks one pickle's opcodes up to STOP without building anything: truncated arguments
    raise, and the nesting depth of every value is tracked to refuse deep nesting."""
    stack: list[int] = []  # the nesting depth of each value on the unpickler's stack
    marks: list[int] = []
    memo: dict[Any, int] = {}
    for op, arg, _ in pickletools.genops(f):
        name = op.name
        if name == "STOP":
            return
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "DUP":
            stack.append(stack[-1])
        else:
            before = op.stack_before
            taken: list[int] = []
            if pickletools.markobject in before:
                start = marks.pop()
                taken, stack[start:] = stack[start:], []
                before = before[: before.index(pickletools.markobject)]
            for _ in before:
                taken.insert(0, stack.pop())
            if name in _MUTATORS:
                stack.append(max([taken[0]] + [1 + d for d in taken[1:]]))
            else:
                stack.extend([1 + max(taken, default=0)] * len(op.stack_after))
            if stack and stack[-1] > MAX_NESTING:
                raise WeightsFileError(f"values nest deeper than {MAX_NESTING} levels")
    raise WeightsFileError("the pickle has no STOP opcode")


def _unpickle(f: BinaryIO, end: int, path: str,
              load_storage: Callable[[tuple], _Storage] | None) -> Any:
    """Scans, then unpickles, the pickle at `f`'s position (ending before `end`); leaves `f`
    just after it."""
    start = f.tell()
    try:
        _scan_pickle(_BoundedReader(f, end))
        stop = f.tell()
        f.seek(start)
        data = f.read(stop - start)
        return _RestrictedUnpickler(io.BytesIO(data), load_storage).load()
    except (WeightsFileError, pickle.UnpicklingError) as err:
        raise type(err)(f"{path}: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, UnicodeError, RecursionError, MemoryError) as err:
        raise WeightsFileError(
            f"{path}: corrupt weights pickle ({type(err).__name__}: {err}).") from None


def _storage_record(pid: tuple) -> tuple[np.dtype, str, int]:
    """(dtype, key, numel) of ('storage', type, key, location, numel[, view_metadata])."""
    if (len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], (str, bytes)) or len(pid[2]) > 256):
        raise pickle.UnpicklingError(f"Malformed storage record in weights file: {pid!r:.80}")
    if len(pid) == 6 and pid[5] is not None:
        raise pickle.UnpicklingError("Storage views (legacy view_metadata) are not supported.")
    numel = _int(pid[4], "storage size")
    if numel < 0:
        raise WeightsFileError(f"a storage declares {numel} elements")
    key = pid[2].decode("ascii") if isinstance(pid[2], bytes) else pid[2]
    return pid[1].dtype, key, numel


def _walk(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """Copies the nested dicts/lists/tuples of `obj` (into plain ones) with `leaf` applied to
    everything else; a value met twice (pickles share by reference) is converted once."""
    done: dict[int, Any] = {}

    def go(x: Any, depth: int) -> Any:
        if id(x) in done:
            return done[id(x)]
        if depth > MAX_NESTING:
            raise WeightsFileError(f"values nest deeper than {MAX_NESTING} levels")
        if isinstance(x, dict):  # dict.items: a pickled BUILD can shadow an instance's items
            out = {k: go(v, depth + 1) for k, v in dict.items(x)}
        elif isinstance(x, (list, tuple)):
            out = type(x)(go(v, depth + 1) for v in x)
        else:
            out = leaf(x)
        done[id(x)] = out
        return out

    return go(obj, 0)


def records_in(obj: Any) -> list[TensorRecord]:
    """Every distinct TensorRecord in a checkpoint tree."""
    found: dict[int, TensorRecord] = {}
    _walk(obj, lambda x: found.setdefault(id(x), x) if isinstance(x, TensorRecord) else x)
    return list(found.values())


def materialize(obj: Any) -> Any:
    """`obj` with every TensorRecord replaced by its array (dicts become plain dicts).

    Refuses when the arrays would take more than `MAX_BROADCAST` times the bytes of the
    storages they come from plus 1 MiB (tensors repeating elements through stride 0)."""
    records = records_in(obj)
    if not records:
        return _walk(obj, lambda x: x)
    path = records[0].storage.path
    storages = {id(r.storage): r.storage for r in records}.values()
    available = sum(s.nbytes for s in storages)
    wanted = sum(r.nbytes for r in records)
    if wanted > MAX_BROADCAST * available + _BROADCAST_SLACK:
        raise WeightsFileError(
            f"{path}: its tensors would take {wanted:,} bytes from {available:,} bytes of "
            f"stored data; more than {MAX_BROADCAST}x is refused (tensor records that repeat "
            "elements with stride 0).")
    zipped = isinstance(records[0].storage.location, str)
    with (open_zip(path) if zipped else open(path, "rb")) as opened:
        return _walk(obj, lambda x: x.numpy(opened) if isinstance(x, TensorRecord) else x)


def load_zip_records(path: str | os.PathLike) -> Any:
    """torch.save's zip format (PREFIX/data.pkl, PREFIX/data/<key>, PREFIX/byteorder, ...)
    with TensorRecord leaves."""
    path = os.fspath(path)
    with open_zip(path) as zf, zip_read_errors(path):
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise WeightsFileError(
                f"{path} is a zip file but not a torch checkpoint (no PREFIX/data.pkl).")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise WeightsFileError(f"{path}: unknown byte order {byteorder!r:.20}.")
        storages: dict[str, _Storage] = {}

        def load_storage(pid: tuple) -> _Storage:
            dtype, key, numel = _storage_record(pid)
            if key not in storages:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise WeightsFileError(f"storage '{key}' is missing from the archive")
                dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
                storage = _Storage(path, dtype, numel, member)
                if zf.getinfo(member).file_size < storage.nbytes:
                    raise WeightsFileError(
                        f"storage '{key}' declares {numel} elements but holds "
                        f"{zf.getinfo(member).file_size} bytes")
                storages[key] = storage
            elif storages[key].numel != numel:
                raise WeightsFileError(f"storage '{key}' is declared with two sizes")
            return storages[key]

        info = zf.getinfo(pkl[0])
        obj = _unpickle(io.BytesIO(zf.read(info)), info.file_size, path, load_storage)
    return _walk(obj, lambda x: x)


def load_legacy_records(path: str | os.PathLike) -> Any:
    """torch's pre-1.6 format, with TensorRecord leaves: pickles of magic, protocol, sys_info,
    the object, the storage keys, then per storage an 8-byte element count and the raw
    little-endian data."""
    path = os.fspath(path)
    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
        dtype, key, numel = _storage_record(pid)
        storage = storages.setdefault(key, _Storage(path, dtype.newbyteorder("<"), numel, None))
        if storage.numel != numel or storage.dtype != dtype.newbyteorder("<"):
            raise WeightsFileError(f"storage '{key}' is declared with two sizes or types")
        return storage

    end = os.path.getsize(path)
    with open(path, "rb") as f:
        header = [_unpickle(f, end, path, None) for _ in range(3)]
        if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
            raise WeightsFileError(f"{path} is not a torch checkpoint (bad magic number or "
                                   "protocol).")
        if isinstance(header[2], dict) and not header[2].get("little_endian", True):
            raise WeightsFileError(f"{path} was saved on a big-endian machine; not supported.")
        obj = _unpickle(f, end, path, load_storage)
        keys = _unpickle(f, end, path, None)
        if not isinstance(keys, (list, tuple)) or len(set(map(str, keys))) != len(keys):
            raise WeightsFileError(f"{path}: corrupt checkpoint, bad list of storage keys.")
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            if key not in storages:
                raise WeightsFileError(
                    f"{path}: corrupt checkpoint, storage '{key}' is never used.")
            storage = storages[key]
            head = f.read(8)
            numel = struct.unpack("<q", head)[0] if len(head) == 8 else -1
            storage.location = f.tell()
            # The record header is the element count (a byte count is tolerated too).
            if numel not in (storage.numel, storage.nbytes) or storage.nbytes > end - f.tell():
                raise WeightsFileError(f"{path}: truncated or corrupt storage '{key}'.")
            f.seek(storage.nbytes, os.SEEK_CUR)
    missing = [k for k, s in storages.items() if s.location is None]
    if missing:
        raise WeightsFileError(f"{path}: corrupt checkpoint, no data for storages {missing[:3]}.")
    return _walk(obj, lambda x: x)


def read_torch_zip(path: str | os.PathLike) -> Any:
    """A zip-format checkpoint with every tensor as a NumPy array."""
    return materialize(load_zip_records(path))


def read_torch_legacy(path: str | os.PathLike) -> Any:
    """A legacy-format checkpoint with every tensor as a NumPy array."""
    return materialize(load_legacy_records(path))


def read_torch_file(path: str | os.PathLike) -> Any:
    """The object `torch.save` wrote (zip archive or legacy stream), tensors as numpy arrays.

    Raises FileNotFoundError, or ValueError with one line for a truncated or non-torch file
    and pickle.UnpicklingError for one that holds objects other than plain data and tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        read = read_torch_zip
    elif head[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy stream
        read = read_torch_legacy
    else:
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive "
                         "nor its legacy pickle stream)")
    try:
        return read(path)
    except pickle.UnpicklingError as err:
        if "Refusing to load global" not in str(err):
            raise ValueError(f"cannot read {path}: {_one_line(err)} (truncated or corrupt "
                             "file?)") from err
        raise pickle.UnpicklingError(
            f"{path}: {_one_line(err)} Training logs of mmengine checkpoints (`message_hub`) are "
            "such objects: keep only the weights with `torch.save({'state_dict': "
            "torch.load(FILE, weights_only=False)['state_dict']}, OUT)`, on a file you trust"
        ) from err
    except (EOFError, zipfile.BadZipFile, zlib.error, struct.error, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {_one_line(err)} (truncated or corrupt "
                         "file?)") from err


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__
