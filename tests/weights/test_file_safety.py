"""Crafted weight files: each is built here and must be refused with a clear error, without
reading outside the file, allocating more than the file justifies, or crashing.

Inputs that crash the interpreter of an unprotected reader (a huge negative stride, a deeply
nested tuple) and those that would allocate gigabytes run in a subprocess whose address space
is capped 512 MiB above what it uses at the start.
"""

import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile

import h5py
import numpy as np
import pytest
from safetensors.numpy import save_file

from pconv_jax.weights import checks, torch_pickle, vgg16_files
from tests.helpers import REPO
from tests.helpers.torch_files import (
    Storage,
    Tensor,
    pickle_checkpoint,
    random_torch_state,
    write_checkpoint,
    write_keras_h5,
    write_legacy,
    write_torch_zip,
    write_zip,
)

WeightsFileError = checks.WeightsFileError


# --------------------------------------------------------------------------- file builders
# The pickles name torch's real globals: stand-in `torch` modules are registered while pickling.


def floats(n, value=1.0):
    return np.full(n, value, "<f4").tobytes()


def write_npz(path, state):
    """Our .npz layout (as `convert` writes it), from a torchvision-layout state dict."""
    arrays = {}
    for name, index, _, _, _ in vgg16_files.VGG16_CONVS:
        if f"features.{index}.weight" not in state:
            continue
        arrays[f"{name}/kernel"] = state[f"features.{index}.weight"].transpose(2, 3, 1, 0)
        arrays[f"{name}/bias"] = state[f"features.{index}.bias"]
    np.savez(path, preprocessing=np.asarray("torch"), **arrays)


def vgg_tensors():
    """A real-shaped VGG16 state dict, one storage per tensor; returns (tensors, data)."""
    tensors, data = {}, {}
    for key, array in random_torch_state().items():
        storage = Storage(str(len(data)), array.size)
        data[storage.key] = array.astype("<f4").tobytes()
        stride = [int(np.prod(array.shape[d + 1:])) for d in range(array.ndim)]
        tensors[key] = Tensor(storage, 0, array.shape, stride)
    return tensors, data


CAPPED_RUN = textwrap.dedent("""
    import resource, sys, time, types
    # The reader needs NumPy only: skip the package's JAX import (a large address space).
    package = types.ModuleType("pconv_jax")
    package.__path__ = ["pconv_jax"]
    sys.modules["pconv_jax"] = package
    from pconv_jax.weights import torch_pickle
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
    start = time.perf_counter()
    try:
        torch_pickle.read_torch_zip(sys.argv[1])
        outcome = "loaded"
    except Exception as err:
        outcome = f"{type(err).__name__}: {err}"
    print(f"{time.perf_counter() - start:.3f} {outcome}")
""")


def read_in_capped_process(path):
    """(seconds, outcome) of read_torch_zip(path) in a subprocess with a capped address space;
    a crash is an outcome too."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", CAPPED_RUN, str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        return None, f"exit status {run.returncode}: {run.stderr[-500:]}"
    seconds, outcome = run.stdout.strip().splitlines()[-1].split(" ", 1)
    return float(seconds), outcome


# --------------------------------------------------------------------------- tensor records


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_negative_stride_is_refused_not_read(tmp_path, layout):
    # Offset 0, stride -1: every element but the first lies before the storage.
    storage = Storage("0", 8)
    path = tmp_path / "w.pth"
    write_checkpoint(path, layout, {"w": Tensor(storage, 0, (8,), (-1,))}, {"0": floats(8)})
    read = torch_pickle.read_torch_zip if layout == "zip" else torch_pickle.read_torch_legacy
    with pytest.raises(WeightsFileError, match="negative offset, size or stride"):
        read(path)


def test_huge_negative_stride_is_refused_without_crashing(tmp_path):
    storage = Storage("0", 8)
    path = tmp_path / "w.pth"
    write_checkpoint(path, "zip", {"w": Tensor(storage, 0, (2,), (-(2**40),))}, {"0": floats(8)})
    _, outcome = read_in_capped_process(path)
    assert outcome.startswith("WeightsFileError") and "negative" in outcome, outcome


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_tensor_past_its_storage_is_refused(tmp_path, layout):
    storage = Storage("0", 8)
    path = tmp_path / "w.pth"
    write_checkpoint(path, layout, {"w": Tensor(storage, 3, (2, 3), (3, 1))}, {"0": floats(8)})
    with pytest.raises(WeightsFileError, match="reaches past its storage of 8 elements"):
        vgg16_files.load_vgg16(path)


@pytest.mark.parametrize("size, stride, message", [
    ((2, 4), (4,), r"size \(2, 4\) but stride \(4,\)"),
    (("8",), (1,), "size is '8', not an integer"),
    ((0, 1 << 70), (1, 1), "out of range"),
])
def test_malformed_tensor_records_are_refused(tmp_path, size, stride, message):
    path = tmp_path / "w.pth"
    write_checkpoint(path, "zip", {"w": Tensor(Storage("0", 8), 0, size, stride)},
                     {"0": floats(8)})
    with pytest.raises(WeightsFileError, match=message):
        torch_pickle.read_torch_zip(path)


def test_storage_smaller_than_declared_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    storage = Storage("0", 1 << 30)  # declares 4 GiB, holds 32 bytes
    write_checkpoint(path, "zip", {"w": Tensor(storage, 0, (8,), (1,))}, {"0": floats(8)})
    with pytest.raises(WeightsFileError, match="declares 1073741824 elements but holds 32 bytes"):
        torch_pickle.read_torch_zip(path)


def test_stride0_giant_tensor_is_refused_fast_without_allocating(tmp_path):
    # 40000x20000 float32 (3.2 GB) from a single stored element.
    path = tmp_path / "w.pth"
    write_checkpoint(path, "zip", {"w": Tensor(Storage("0", 1), 0, (40000, 20000), (0, 0))},
                     {"0": floats(1)})
    seconds, outcome = read_in_capped_process(path)
    assert outcome.startswith("WeightsFileError"), outcome
    assert "3,200,000,000 bytes from 4 bytes" in outcome
    assert seconds < 0.5


def test_stride0_giant_vgg_weight_fails_its_shape_check_before_reading(tmp_path):
    tensors, data = vgg_tensors()
    tensors["features.0.weight"] = Tensor(Storage("big", 1), 0, (40000, 20000), (0, 0))
    data["big"] = floats(1)
    path = tmp_path / "w.pth"
    write_checkpoint(path, "zip", tensors, data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"features\.0\.weight' has shape \(40000, 20000\)"):
            vgg16_files.load_vgg16(path)
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 1.0
    assert peak < 64 << 20  # the file itself is 7 MB


def test_broadcast_within_the_limit_is_read(tmp_path):
    # stride 0 is legitimate (an expanded tensor); the output may be up to 4x the stored bytes.
    path = tmp_path / "w.pth"
    write_checkpoint(path, "zip", {"w": Tensor(Storage("0", 3), 0, (4, 3), (0, 1))},
                     {"0": np.array([1, 2, 3], "<f4").tobytes()})
    np.testing.assert_array_equal(torch_pickle.read_torch_zip(path)["w"], [[1, 2, 3]] * 4)


# --------------------------------------------------------------------------- pickles


def deep_dict_pickle(depth):
    """{'a': {'a': ... {} }} nested `depth` deep, built without recursion."""
    key = b"X\x01\x00\x00\x00a"  # BINUNICODE 'a'
    return b"\x80\x02}" + (key + b"}") * depth + b"s" * depth + b"."


def deep_tuple_key_pickle(depth):
    """{((((),),),): 1} nested `depth` deep: hashing it overflows the C stack."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_deeply_nested_pickle_is_a_clear_error(tmp_path, layout):
    path = tmp_path / "w.pth"
    (write_zip if layout == "zip" else write_legacy)(path, deep_dict_pickle(5_000), {})
    with pytest.raises(WeightsFileError, match="nest deeper than 100 levels"):
        vgg16_files.load_vgg16(path)


def test_deeply_nested_tuple_key_is_refused_before_unpickling(tmp_path):
    path = tmp_path / "w.pth"
    write_zip(path, deep_tuple_key_pickle(1_000_000), {})
    _, outcome = read_in_capped_process(path)
    assert outcome.startswith("WeightsFileError") and "nest deeper" in outcome, outcome


def test_declared_length_beyond_the_file_is_refused(tmp_path):
    # BINBYTES8 declaring 1 TiB: an unpickler allocates the declared size before reading.
    path = tmp_path / "w.pth"
    write_zip(path, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.", {})
    with pytest.raises(WeightsFileError, match="corrupt weights pickle"):
        torch_pickle.read_torch_zip(path)


# --------------------------------------------------------------------------- zip archives


def test_duplicate_zip_members_are_refused(tmp_path):
    state = random_torch_state()
    path = tmp_path / "w.npz"
    write_npz(path, state)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is told to write
        with io.BytesIO() as buf:
            np.save(buf, np.zeros((3, 3, 3, 64), np.float32))
            zf.writestr("conv1_1/kernel.npy", buf.getvalue())
    with pytest.raises(WeightsFileError, match=r"lists \['conv1_1/kernel.npy'\] more than once"):
        vgg16_files.load_vgg16(path)


def test_path_traversal_member_names_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    pickled = pickle_checkpoint({"w": Tensor(Storage("0", 4), 0, (4,), (1,))}, legacy=False)
    write_zip(path, pickled, {"0": floats(4)}, pkl_name="../data.pkl")
    with pytest.raises(WeightsFileError, match=r"unsafe names \['../data.pkl'"):
        torch_pickle.read_torch_zip(path)


def test_zip_bomb_is_refused_before_decompressing(tmp_path):
    numel = 16 << 20  # 64 MiB of zeros deflate to about 64 KiB
    path = tmp_path / "w.pth"
    pickled = pickle_checkpoint({"w": Tensor(Storage("0", numel), 0, (numel,), (1,))}, False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickled)
        with zf.open("archive/data/0", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(WeightsFileError, match="zip bomb"):
        torch_pickle.read_torch_zip(path)


@pytest.mark.parametrize("fmt", ["pth", "npz"])
def test_damaged_zip_member_is_a_clear_error(tmp_path, fmt):
    state = random_torch_state()
    path = tmp_path / f"w.{fmt}"
    write_format(path, state, fmt)
    raw = path.read_bytes()
    bias = state["features.0.bias"].astype("<f4").tobytes()
    assert raw.count(bias) == 1
    at = raw.index(bias) + 10
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    with pytest.raises(WeightsFileError, match="damaged zip archive.*CRC"):
        vgg16_files.load_vgg16(path)


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    state = random_torch_state()
    path = tmp_path / "w.npz"
    write_npz(path, state)
    evil = np.empty((3, 3, 3, 64), object)
    evil[...] = RunsShell(marker)
    with warnings.catch_warnings(), zipfile.ZipFile(path) as zf:
        warnings.simplefilter("ignore")
        members = {n: zf.read(n) for n in zf.namelist() if n != "conv1_1/kernel.npy"}
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
        with io.BytesIO() as buf:
            np.save(buf, evil, allow_pickle=True)
            zf.writestr("conv1_1/kernel.npy", buf.getvalue())
    with pytest.raises(WeightsFileError, match="conv1_1/kernel' has dtype object"):
        vgg16_files.load_vgg16(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- HDF5


@pytest.mark.parametrize("kind", ["external_storage", "virtual", "external_link", "soft_link"])
def test_h5_data_from_outside_the_file_is_refused(tmp_path, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(floats(3 * 3 * 3 * 64, 42.0))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.full((3, 3, 3, 64), 42.0, np.float32)
    path = tmp_path / "vgg16_notop.h5"
    write_keras_h5(path, random_torch_state(), keras2_names=False)
    with h5py.File(path, "a") as f:
        group, name, shape = f["block1_conv1"], "block1_conv1_W_1:0", (3, 3, 3, 64)
        del group[name]
        if kind == "external_storage":
            group.create_dataset(name, shape, "<f4", external=[(str(secret), 0, 4 * 1728)])
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape, "<f4")
            layout[...] = h5py.VirtualSource(str(other), "data", shape)
            group.create_virtual_dataset(name, layout)
        elif kind == "external_link":
            group[name] = h5py.ExternalLink(str(other), "/data")
        else:
            f["elsewhere"] = np.full(shape, 42.0, np.float32)
            group[name] = h5py.SoftLink("/elsewhere")
    message = "outside the file" if kind in ("external_storage", "virtual") else "links are refused"
    with pytest.raises(WeightsFileError, match=message):
        vgg16_files.load_vgg16(path)


# --------------------------------------------------------------------------- values


def write_format(path, state, fmt):
    if fmt == "npz":
        write_npz(path, state)
    elif fmt == "pth":
        write_torch_zip(path, state)
    elif fmt == "safetensors":
        save_file(dict(state), str(path))
    else:
        write_keras_h5(path, state, keras2_names=True)


NAMED = {"npz": "conv2_1/kernel", "pth": "features.5.weight", "safetensors": "features.5.weight",
         "h5": "block2_conv1/block2_conv1/kernel:0"}


@pytest.mark.parametrize("fmt", ["npz", "pth", "safetensors", "h5"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_array(tmp_path, fmt, bad):
    state = random_torch_state()
    state["features.5.weight"][3, 7, 1, 2] = bad
    path = tmp_path / f"w.{fmt}"
    write_format(path, state, fmt)
    with pytest.raises(WeightsFileError, match=f"'{NAMED[fmt]}' holds 1 non-finite value"):
        vgg16_files.load_vgg16(path)


def test_convert_refuses_nan_weights_and_writes_nothing(tmp_path):
    state = random_torch_state()
    state["features.0.bias"][5] = np.nan
    src, dst = tmp_path / "w.pth", tmp_path / "out.npz"
    write_torch_zip(src, state)
    # The command's error handler (`cli.run`) turns this into one `error:` line.
    with pytest.raises(WeightsFileError, match="features.0.bias' holds 1 non-finite value"):
        vgg16_files.main(["vgg16_files", "convert", str(src), str(dst)])
    assert not dst.exists()
