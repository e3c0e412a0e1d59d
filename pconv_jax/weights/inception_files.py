"""pytorch-fid's Inception weights file -> `InceptionParams`.

`pt_inception-2015-12-05-6726825d.pth` is a torch state dict of pytorch-fid's `FIDInceptionV3`
(the TensorFlow 2015-12-05 Inception graph ported to torch). It is read by the project's
restricted unpickler (`torch_pickle`), which never imports torch nor runs code from the file;
keys and shapes are checked on the tensor records before any weights are read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from pconv_jax.network.inception import (
    FEATURE_DIM,
    INCEPTION_CONVS,
    NUM_CLASSES,
    InceptionParams,
    fold_batch_norm,
    make_params,
)
from pconv_jax.weights import checks, torch_pickle

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_HELP = (
    "FID and the Inception Score need pytorch-fid's Inception weights "
    f"`pt_inception-2015-12-05-6726825d.pth` (MIT licence), from {WEIGHTS_URL}; name the file "
    "with `--config.eval.inception_weights=PATH`."
)
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of `FIDInceptionV3().state_dict()` with its shape, except BatchNorm's
    `num_batches_tracked` counters (optional, and unused in inference)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, spec in INCEPTION_CONVS.items():
        shapes[f"{name}.conv.weight"] = (spec.c_out, spec.c_in, *spec.kernel)
        for part in _BN_PARTS:
            shapes[f"{name}.bn.{part}"] = (spec.c_out,)
    shapes["fc.weight"] = (NUM_CLASSES, FEATURE_DIM)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


def _counter_keys() -> set[str]:
    return {f"{name}.bn.num_batches_tracked" for name in INCEPTION_CONVS}


def _read_records(path: str) -> Mapping[str, object]:
    with open(path, "rb") as f:
        head = f.read(2)
    if head.startswith(b"PK"):
        state = torch_pickle.load_zip_records(path)
    elif head[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy stream
        state = torch_pickle.load_legacy_records(path)
    else:
        raise checks.WeightsFileError(
            f"{path} is not a torch .pth file (neither a zip archive nor a pickle stream). "
            f"{WEIGHTS_HELP}")
    if not isinstance(state, Mapping):
        raise checks.WeightsFileError(
            f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}.")
    return state


def _check_records(state: Mapping[str, object], path: str) -> dict[str, object]:
    """The records of the expected keys, after checking that nothing is missing, extra,
    mis-shaped or not a tensor."""
    shapes = expected_shapes()
    for key, shape in shapes.items():
        if key not in state:
            raise KeyError(f"Inception weights {path}: missing key '{key}' (is this pytorch-fid's "
                           "pt_inception-2015-12-05 file?).")
        record = state[key]
        if not isinstance(record, torch_pickle.TensorRecord):
            raise checks.WeightsFileError(f"Inception weights {path}: '{key}' is not a tensor.")
        if tuple(record.shape) != shape:
            raise ValueError(f"Inception weights {path}: '{key}' has shape {tuple(record.shape)}, "
                             f"expected {shape}.")
    extra = sorted(set(map(str, state)) - set(shapes) - _counter_keys())
    if extra:
        raise KeyError(f"Inception weights {path}: unexpected key '{extra[0]}' ({len(extra)} "
                       "unexpected in all); expected the state dict of pytorch-fid's "
                       "FIDInceptionV3 (no auxiliary classifier).")
    return {key: state[key] for key in shapes if key != "fc.bias"}  # IS uses unbiased logits


def load_inception(path: str | os.PathLike) -> InceptionParams:
    """Loads pytorch-fid's Inception-v3 weights, BatchNorm folded into the convs.

    Raises FileNotFoundError (saying where the file comes from and which setting names it) for
    a missing file, KeyError naming the key for a missing or unexpected weight, ValueError for
    a wrong shape, non-finite weights or a corrupt or unsafe file (`WeightsFileError`),
    pickle.UnpicklingError for a .pth that holds anything but tensors.
    """
    path = os.fspath(path)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights file not found: {path!r}. {WEIGHTS_HELP}")
    arrays = torch_pickle.materialize(_check_records(_read_records(path), path))
    for key, array in arrays.items():
        checks.check_weights(key, array, path)
    convs = {}
    for name in INCEPTION_CONVS:
        bn = [arrays[f"{name}.bn.{part}"] for part in _BN_PARTS]
        if np.any(bn[3] < 0):
            raise checks.WeightsFileError(
                f"Inception weights {path}: '{name}.bn.running_var' holds negative variances; "
                "the file is corrupt.")
        convs[name] = fold_batch_norm(arrays[f"{name}.conv.weight"], *bn)
    return make_params(convs, arrays["fc.weight"].T)
