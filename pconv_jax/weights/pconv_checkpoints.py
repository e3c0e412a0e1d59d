"""Trained PConv networks from PyTorch: naoto0804's and OpenMMLab mmagic's checkpoints.

`load_pconv_checkpoint(source, path)` returns `(model_config, model)`: the `config.model`
section and a `PConvUNet` holding the file's weights, in inference mode. Both upstream networks
are the paper's UNet (7 levels at 256x256; depth and widths are read from the file), so the
mapping is a renaming plus what differs in the computation:

- naoto0804/pytorch-inpainting-with-partial-conv (`net.py`): `PartialConv` computes
  `(conv(X*M) - b) / sum(M) + b`, without the window-size factor `C_in*k*k` of the paper's
  Eq. 1 that our layer applies, so our kernel is theirs / (C_in*k*k). Only `dec_1` has a bias;
  `enc_1` has neither bias nor BatchNorm. Images are normalised with ImageNet's mean and std
  (`opt.py`) and the output is in that space: `input_norm='imagenet'`. RGB.
- mmagic / mmediting (`PartialConv2d` with `multi_channel=True`, `MaskConvModule`,
  `PConvEncoder`, `PConvDecoder`): the paper's formula (with a 1e-8 epsilon in the ratio);
  a bias exactly where there is no BatchNorm (`enc1`, `dec1`). Images are normalised to
  [-1, 1] (mean = std = 127.5): `input_norm='symmetric'`. Its data pipeline loads images in
  OpenCV's BGR order and keeps it (`LoadImageFromFile` channel_order 'bgr', `Normalize`
  to_rgb=False), so the image channels of `enc1`, of `dec1`'s input skip and of `dec1`'s output
  are reversed here and the network takes RGB like every other pconv_jax model.

Both: OIHW kernels become HWIO; BatchNorm keeps its running statistics (epsilon 1e-5 both
sides); the decoder concatenates [upsampled features, skip] in that order and upsamples
features and masks nearest-neighbour, as ours does. The all-ones mask kernels are checked, then
dropped. A file with missing, unexpected or mis-shaped weights is refused with their list
(upstream's own loader uses strict=False and would silently ignore them).

Files are read with the restricted unpickler of `pconv_jax.weights.torch_pickle`: no torch, and
nothing in the file runs. Parts of an mmagic checkpoint that are not the network (`meta`,
`optimizer`, the perceptual loss's VGG under `loss_*`) are read as plain data and ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pconv_jax import config as config_lib
from pconv_jax.network import unet
from pconv_jax.weights import checks, torch_pickle

SOURCES = ("naoto0804", "mmagic")
IMAGE_CHANNELS = 3
_BN_STATS = ("weight", "bias", "running_mean", "running_var")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not form the upstream network (names the keys)."""


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One upstream conv layer: where its weights live and what shapes they must have."""
    level: int          # 1-based upstream index (enc_1 ... / dec_1 ...)
    decoder: bool
    in_channels: int
    out_channels: int
    kernel_size: int
    bias: bool
    batch_norm: bool


@dataclasses.dataclass(frozen=True)
class _Format:
    """How one upstream project names and computes its layers."""
    name: str
    input_norm: str
    channel_order: str                       # of the images the network was trained on
    prefix: Callable[[_Layer], str]          # 'enc_3.' / 'generator.encoder.enc3.'
    conv: str                                # conv weight (and bias) under the prefix
    mask_kernel: str                         # the all-ones mask kernel under the prefix
    bias: Callable[[_Layer], bool]           # whether upstream's layer has a conv bias
    divides_by_window: bool                  # True: ratio 1/sum(M) instead of C_in*k*k/sum(M)
    level_pattern: re.Pattern


NAOTO0804 = _Format(
    name="naoto0804", input_norm="imagenet", channel_order="rgb",
    prefix=lambda layer: f"{'dec' if layer.decoder else 'enc'}_{layer.level}.",
    conv="conv.input_conv", mask_kernel="conv.mask_conv.weight",
    bias=lambda layer: layer.decoder and layer.level == 1,
    divides_by_window=True, level_pattern=re.compile(r"^(?:enc|dec)_(\d+)\."))

MMAGIC = _Format(
    name="mmagic", input_norm="symmetric", channel_order="bgr",
    prefix=lambda layer: (f"generator.decoder.dec{layer.level}." if layer.decoder
                          else f"generator.encoder.enc{layer.level}."),
    conv="conv", mask_kernel="conv.weight_mask_updater",
    bias=lambda layer: not layer.batch_norm,
    divides_by_window=False,
    level_pattern=re.compile(r"^generator\.(?:encoder\.enc|decoder\.dec)(\d+)\."))

FORMATS = {f.name: f for f in (NAOTO0804, MMAGIC)}

# The public trained networks: (source, file, trained on, download link). naoto0804 links its
# file from the repository's README (a Google Drive file); mmagic from its configs' README.
_MMAGIC_FILES = "https://download.openmmlab.com/mmediting/inpainting/pconv/"
PUBLIC_FILES = (
    ("naoto0804", "1000000.pth", "Places2, 256x256",
     "https://drive.google.com/open?id=1SYjJ-Vlu2cpAlgBG5FiJueN9W4lf48w8"),
    ("mmagic", "pconv_256x256_stage2_4x2_places_20200619-1ffed0e8.pth", "Places365, 256x256",
     _MMAGIC_FILES + "pconv_256x256_stage2_4x2_places_20200619-1ffed0e8.pth"),
    ("mmagic", "pconv_256x256_stage2_4x2_celeba_20200619-860f8b95.pth", "CelebA-HQ, 256x256",
     _MMAGIC_FILES + "pconv_256x256_stage2_4x2_celeba_20200619-860f8b95.pth"),
)


def missing_file_message(source: str, path: str) -> str:
    """One line for a checkpoint file that does not exist: where each public file comes from,
    the requested source's first."""
    listed = sorted(PUBLIC_FILES, key=lambda f: f[0] != source)
    where = "; ".join(f"{name} ({source_}, {data}): {url}" for source_, name, data, url in listed)
    return f"checkpoint file {path!r} does not exist. The public files: {where}"


# ----------------------------------------------------------------------------- reading

def _state_dict(fmt: _Format, obj: Any, path: str) -> tuple[dict[str, np.ndarray], int | None]:
    """(the network's state_dict, upstream's training step or None) of a checkpoint object."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} is not a {fmt.name} checkpoint: it holds a "
                         f"{type(obj).__name__}, not a dict")
    step = None
    if fmt is NAOTO0804 and isinstance(obj.get("model"), Mapping):
        state, step = obj["model"], obj.get("n_iter")   # torch.save({'n_iter', 'model', ...})
    elif fmt is MMAGIC and isinstance(obj.get("state_dict"), Mapping):
        state, meta = obj["state_dict"], obj.get("meta")  # mmcv / mmengine {'meta', ...}
        step = meta.get("iter") if isinstance(meta, Mapping) else None
    else:
        state = obj  # a bare state_dict
    if not any(fmt.level_pattern.match(str(k)) for k in state):
        top = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointMismatchError(
            f"{path} is not a {fmt.name} PConvUNet checkpoint: none of its keys names an "
            f"encoder or decoder layer (top-level keys: {top}); is it the other source "
            f"({' or '.join(s for s in SOURCES if s != fmt.name)})?")
    step = int(step) if isinstance(step, (int, np.integer)) else None
    return dict(state), step


# ----------------------------------------------------------------------------- layout

def _layers(depth: int, widths: tuple[int, ...]) -> list[_Layer]:
    """Every conv layer of the upstream UNet of `depth` levels and encoder `widths`."""
    kernels = unet.paper_kernel_sizes(depth)
    skips = (IMAGE_CHANNELS,) + widths[:-1]  # what the decoder's level i joins
    layers = [_Layer(i + 1, False, skips[i], widths[i], kernels[i], False, i > 0)
              for i in range(depth)]
    previous = widths[-1]
    for i in reversed(range(depth)):
        out = IMAGE_CHANNELS if i == 0 else skips[i]
        layers.append(_Layer(i + 1, True, previous + skips[i], out, 3, False, i > 0))
        previous = out
    return layers


def _expected(fmt: _Format, layers: list[_Layer]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of every weight upstream's network of these layers holds."""
    shapes = {}
    for layer in layers:
        p = fmt.prefix(layer)
        kernel = (layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size)
        shapes[p + fmt.conv + ".weight"] = kernel
        shapes[p + fmt.mask_kernel] = kernel
        if fmt.bias(layer):
            shapes[p + fmt.conv + ".bias"] = (layer.out_channels,)
        if layer.batch_norm:
            shapes.update({f"{p}bn.{name}": (layer.out_channels,) for name in _BN_STATS})
    return shapes


def _optional(fmt: _Format, layers: list[_Layer]) -> set[str]:
    """Keys that may be present or not (BatchNorm's counter, absent before PyTorch 0.4.1)."""
    return {fmt.prefix(layer) + "bn.num_batches_tracked" for layer in layers if layer.batch_norm}


def _ignored(fmt: _Format, key: str) -> bool:
    """Keys that belong to upstream's training, not to the network."""
    # mmagic's inpaintor also holds its loss modules (the perceptual loss's VGG16).
    return fmt is MMAGIC and not key.startswith("generator.") and key.startswith("loss_")


def _architecture(fmt: _Format, state: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """(depth, base_width, max_width) read from the encoder's kernels."""
    depth = max(int(m.group(1)) for k in state if (m := fmt.level_pattern.match(k)))
    widths = []
    for level in range(1, depth + 1):
        layer = _Layer(level, False, 0, 0, 0, False, False)
        kernel = state.get(fmt.prefix(layer) + fmt.conv + ".weight")
        if kernel is not None and getattr(kernel, "ndim", 0) == 4:
            widths.append(int(kernel.shape[0]))
    if not widths:
        raise CheckpointMismatchError(f"no encoder kernel of a {fmt.name} PConvUNet found")
    first = _Layer(1, False, 0, 0, 0, False, False)
    first_kernel = state.get(fmt.prefix(first) + fmt.conv + ".weight")
    base = int(first_kernel.shape[0]) if getattr(first_kernel, "ndim", 0) == 4 else widths[0]
    return depth, base, max(widths)


def _check_keys(fmt: _Format, state: Mapping[str, Any], expected: dict[str, tuple[int, ...]],
                optional: set[str], path: str, depth: int, widths: tuple[int, ...]) -> None:
    problems = []
    for key in sorted(expected):
        if key not in state:
            problems.append(f"  missing: {key} {expected[key]}")
        else:
            shape = tuple(getattr(state[key], "shape", ()))
            if not isinstance(state[key], np.ndarray) or shape != expected[key]:
                problems.append(f"  mis-shaped: {key} {shape}, expected {expected[key]}")
    problems += [f"  unexpected: {key} {tuple(getattr(state[key], 'shape', ()))}"
                 for key in sorted(state)
                 if key not in expected and key not in optional and not _ignored(fmt, key)]
    if problems:
        shown = problems[:30] + ([f"  ... and {len(problems) - 30} more"]
                                 if len(problems) > 30 else [])
        raise CheckpointMismatchError(
            f"{path} does not hold the {fmt.name} PConvUNet it appears to be (depth {depth}, "
            f"encoder widths {list(widths)}); {len(problems)} weights differ:\n"
            + "\n".join(shown))
    for key in expected:
        if key.endswith(fmt.mask_kernel) and not np.all(state[key] == 1):
            raise CheckpointMismatchError(
                f"{path}: {key} is not all ones: not a partial-convolution mask kernel")


# ----------------------------------------------------------------------------- conversion

def _kernel(fmt: _Format, layer: _Layer, weight: np.ndarray, bgr: bool) -> np.ndarray:
    """PyTorch OIHW -> HWIO, rescaled to our ratio and reordered to RGB where images enter."""
    weight = np.asarray(weight, np.float64)
    if fmt.divides_by_window:  # theirs / sum(M) == ours * (C_in*k*k) / sum(M)
        weight = weight / (layer.in_channels * layer.kernel_size**2)
    if bgr and layer.level == 1:
        weight = weight.copy()
        if layer.decoder:  # input = [features | image]; output = the image
            weight[:, -IMAGE_CHANNELS:] = weight[:, -IMAGE_CHANNELS:][:, ::-1]
            weight = weight[::-1]
        else:
            weight = weight[:, ::-1]
    return np.transpose(weight, (2, 3, 1, 0)).astype(np.float32)


def _set(variable: nnx.Variable, value: np.ndarray) -> None:
    if tuple(variable[...].shape) != tuple(value.shape):  # a bug here, not a user error
        raise AssertionError(f"shape {value.shape} for a variable of {variable[...].shape}")
    variable[...] = jnp.asarray(value, jnp.float32)


def _fill_block(fmt: _Format, block, layer: _Layer, state: Mapping[str, np.ndarray],
                bgr: bool) -> None:
    p = fmt.prefix(layer)
    _set(block.conv.kernel, _kernel(fmt, layer, state[p + fmt.conv + ".weight"], bgr))
    if block.conv.bias is not None:
        bias = np.zeros(layer.out_channels, np.float32)
        if fmt.bias(layer):
            bias = np.asarray(state[p + fmt.conv + ".bias"], np.float32)
            if bgr and layer.decoder and layer.level == 1:
                bias = bias[::-1]
        _set(block.conv.bias, bias)
    if layer.batch_norm:
        _set(block.bn.scale, state[p + "bn.weight"])
        _set(block.bn.bias, state[p + "bn.bias"])
        _set(block.bn.mean, state[p + "bn.running_mean"])
        _set(block.bn.var, state[p + "bn.running_var"])


def model_config(depth: int, base_width: int, max_width: int,
                 input_norm: str) -> ml_collections.ConfigDict:
    """`config.model` of a converted network."""
    config = config_lib.default_config().model
    config.depth, config.base_width, config.max_width = depth, base_width, max_width
    config.input_norm = input_norm
    return config


@dataclasses.dataclass(frozen=True)
class Converted:
    """A converted network and where it came from."""
    config: ml_collections.ConfigDict   # `config.model`
    model: unet.PConvUNet               # in inference mode
    source: str
    upstream_step: int | None
    channel_order: str


def convert(source: str, path: str | os.PathLike, *,
            channel_order: str | None = None) -> Converted:
    """Reads an upstream checkpoint and builds the equivalent `PConvUNet`.

    Args:
      source: 'naoto0804' or 'mmagic'.
      path: the `.pth` file.
      channel_order: 'rgb' or 'bgr', the order of the images upstream trained on; None = the
        source's (naoto0804: rgb, mmagic: bgr).
    """
    if source not in FORMATS:
        raise ValueError(f"unknown checkpoint source {source!r}; use one of {', '.join(SOURCES)}")
    fmt = FORMATS[source]
    channel_order = channel_order or fmt.channel_order
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    path = os.fspath(path)
    try:
        obj = torch_pickle.read_torch_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(missing_file_message(source, path)) from None
    state, step = _state_dict(fmt, obj, path)
    depth, base, top = _architecture(fmt, state)
    widths = unet.paper_widths(depth, base, top)
    layers = _layers(depth, widths)
    expected = _expected(fmt, layers)
    _check_keys(fmt, state, expected, _optional(fmt, layers), path, depth, widths)
    for key in expected:  # a NaN would otherwise surface only when the network is saved
        checks.check_weights(key, state[key], path)

    config = model_config(depth, base, top, fmt.input_norm)
    model = unet.PConvUNet.from_config(config, rngs=nnx.Rngs(0))
    encoder_layers, decoder_layers = layers[:depth], layers[depth:]  # decoder: deepest first
    for block, layer in zip(list(model.encoder) + list(model.decoder),
                            encoder_layers + decoder_layers):
        _fill_block(fmt, block, layer, state, channel_order == "bgr")
    model.eval()
    return Converted(config, model, source, step, channel_order)


def load_pconv_checkpoint(source: str, path: str | os.PathLike, *,
                          channel_order: str | None = None
                          ) -> tuple[ml_collections.ConfigDict, unet.PConvUNet]:
    """(`config.model`, model in inference mode) of an upstream PyTorch checkpoint.

    The model takes [0, 1] RGB images and 1 = valid masks, like every pconv_jax network.
    Raises FileNotFoundError, ValueError (an unreadable file; CheckpointMismatchError naming
    the missing, unexpected and mis-shaped weights) or pickle.UnpicklingError (a file holding
    objects other than plain data and tensors).
    """
    converted = convert(source, path, channel_order=channel_order)
    return converted.config, converted.model
