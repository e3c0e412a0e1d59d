"""Flax NNX layers: `PartialConv` and the paper's UNet of partial convolutions, `PConvUNet`."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.ops.pconv import partial_conv, plain_conv

# `input_norm`: the pixel space the network computes in, as per-channel (mean, std) of
# [0, 1] pixels. Images enter and outputs leave the network in [0, 1] whatever the setting.
INPUT_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,                                                    # [0, 1] as given
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),      # torchvision's statistics
    "symmetric": ((0.5,), (0.5,)),                                   # [-1, 1]: (x - 0.5) / 0.5
}


def paper_widths(depth: int, base_width: int = 64, max_width: int = 512) -> tuple[int, ...]:
    """Encoder widths of the paper's table: 64, 128, 256, 512, 512, ... (capped at max_width)."""
    return tuple(min(base_width * 2**i, max_width) for i in range(depth))


def paper_kernel_sizes(depth: int) -> tuple[int, ...]:
    """Encoder kernel sizes of the paper's table: 7, 5, 5, then 3."""
    return tuple((7, 5, 5)[i] if i < 3 else 3 for i in range(depth))


def param_dtype(dtype) -> jnp.dtype:
    """The parameters' dtype for a compute dtype: at least float32 (bfloat16 compute keeps
    float32 parameters; float64 compute has float64 parameters)."""
    return jnp.promote_types(dtype, jnp.float32)


class PartialConv(nnx.Module):
    """A partial convolution layer: holds kernel (HWIO) and bias, calls `partial_conv`.

    With `partial=False` it is an ordinary convolution of the same shape (the mask passes
    through untouched) for the paper's "Conv" baseline. `dtype` is the compute dtype; the
    parameters are `param_dtype(dtype)`.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, use_bias: bool = True, partial: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        shape = (kernel_size, kernel_size, in_features, out_features)
        # He-normal on the fan-in (kh * kw * C_in), untruncated like the authors' kaiming_normal_.
        init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype(dtype)))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype(dtype))) if use_bias else None
        self.stride, self.dilation = stride, dilation
        self.partial, self.dtype = partial, dtype

    def __call__(self, x, mask):
        """x, mask: arrays or matching sequences of groups (see `partial_conv`)."""
        bias = None if self.bias is None else self.bias[...]
        if self.partial:
            return partial_conv(x, mask, self.kernel[...].astype(self.dtype), bias,
                                stride=self.stride, dilation=self.dilation)
        if isinstance(x, (list, tuple)):
            x = jnp.concatenate(x, axis=-1)
        y = plain_conv(x, self.kernel[...].astype(self.dtype), bias, stride=self.stride,
                       dilation=self.dilation)
        return y, None


class _Block(nnx.Module):
    """Partial conv, optional BatchNorm, optional activation."""

    def __init__(self, in_features, out_features, kernel_size, *, stride, batch_norm, activation,
                 partial, momentum, dtype, rngs):
        self.conv = PartialConv(in_features, out_features, kernel_size, stride=stride,
                                use_bias=not batch_norm, partial=partial, dtype=dtype, rngs=rngs)
        self.bn = _batch_norm(out_features, momentum, dtype, rngs) if batch_norm else None
        self.activation = activation

    def __call__(self, x, mask, *, frozen_bn: bool = False):
        y, new_mask = self.conv(x, mask)
        if self.bn is not None:
            y = self.bn(y, use_running_average=True if frozen_bn else None)
        if self.activation == "relu":
            y = jax.nn.relu(y)
        elif self.activation == "leaky_relu":
            y = jax.nn.leaky_relu(y, 0.2)
        return y, new_mask


def _batch_norm(features, momentum, dtype, rngs) -> nnx.BatchNorm:
    bn = nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, dtype=dtype,
                       param_dtype=param_dtype(dtype), rngs=rngs)
    # Flax keeps the running statistics in float32 whatever param_dtype says.
    bn.mean = nnx.BatchStat(bn.mean[...].astype(param_dtype(dtype)))
    bn.var = nnx.BatchStat(bn.var[...].astype(param_dtype(dtype)))
    return bn


def _run_block(block, x, mask, frozen_bn):
    return block(x, mask, frozen_bn=frozen_bn)


def _upsample2x(x):
    """Nearest-neighbour x2 upsampling of NHWC features or masks."""
    # jnp.repeat rather than a broadcast+reshape: the reshape is refused on batch-sharded
    # arrays of an Explicit mesh.
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _nearest_valid_sizes(size: int, multiple: int) -> str:
    lower, upper = (size // multiple) * multiple, -(-size // multiple) * multiple
    return " or ".join(str(s) for s in sorted({lower, upper}) if s > 0)


class PConvUNet(nnx.Module):
    """The paper's UNet of partial convolutions.

    Encoder level i: partial conv with kernel `kernel_sizes[i]`, stride 2, BatchNorm (not on the
    first level), ReLU. Decoder (deepest first): nearest x2 upsampling of features and mask,
    concatenation with the skip's features and mask (the last skip is the input image and mask),
    partial conv 3x3, BatchNorm and LeakyReLU(0.2) on all but the last. No output activation:
    use `composite` to paste the known pixels back.

    `model(image, mask)`: image (N, H, W, C) in [0, 1]; mask (N, H, W, 1) or (N, H, W, C),
    1 = valid, binarised at `MASK_THRESHOLD` (values > 0.5 are valid). H and W must be multiples
    of 2**depth. Returns the raw output (N, H, W, out_channels) in `param_dtype(dtype)`.

    `dtype` is the compute dtype: 'float32', 'bfloat16' (mixed precision: float32 parameters,
    float32 output) or 'float64' (with `jax_enable_x64`: float64 parameters, running
    statistics and output, for gradient checks).

    `freeze_encoder_bn = True` (the paper's fine-tuning stage) makes the encoder's BatchNorm use
    its running statistics even in training mode; freezing its scale and bias is the optimizer's
    job (see `encoder_batchnorm_filter`).

    `remat=True` recomputes each block's activations in the backward pass instead of storing
    them (`nnx.remat`): less memory for large images at the price of a second forward pass.

    `input_norm` (see `INPUT_NORMS`) normalises the image on the way in and maps the output
    back on the way out, so callers keep [0, 1] images whatever space the weights were trained
    in (networks converted from PyTorch use 'imagenet' or 'symmetric'). Hole pixels need no
    special value: the first partial convolution multiplies the input by the mask. The
    baseline (`partial=False`) fills holes with `hole_fill`, a [0, 1] pixel value, before
    normalising.
    """

    def __init__(self, *, depth: int = 7, widths: Sequence[int] | None = None,
                 kernel_sizes: Sequence[int] | None = None, in_channels: int = 3,
                 out_channels: int = 3, partial: bool = True, hole_fill: float = 0.5,
                 bn_momentum: float = 0.9, dtype=jnp.float32, remat: bool = False,
                 input_norm: str = "none", rngs: nnx.Rngs):
        widths = tuple(widths) if widths is not None else paper_widths(depth)
        kernel_sizes = (tuple(kernel_sizes) if kernel_sizes is not None
                        else paper_kernel_sizes(depth))
        if len(widths) != depth or len(kernel_sizes) != depth:
            raise ValueError(f"widths {widths} and kernel_sizes {kernel_sizes} must both have "
                             f"depth={depth} entries")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {sorted(INPUT_NORMS)}, got {input_norm!r}")
        stats = INPUT_NORMS[input_norm]
        if stats is not None and (len(stats[0]) not in (1, in_channels)
                                  or len(stats[0]) not in (1, out_channels)):
            raise ValueError(f"input_norm {input_norm!r} has {len(stats[0])}-channel statistics; "
                             f"the network has {in_channels} input and {out_channels} output "
                             "channels")
        self.input_norm = input_norm
        self.depth, self.in_channels, self.out_channels = depth, in_channels, out_channels
        self.partial, self.hole_fill, self.dtype = partial, hole_fill, jnp.dtype(dtype)
        self.freeze_encoder_bn = False
        self.remat = remat
        common = dict(partial=partial, momentum=bn_momentum, dtype=self.dtype, rngs=rngs)

        encoder, previous = [], in_channels
        for i, (width, k) in enumerate(zip(widths, kernel_sizes)):
            encoder.append(_Block(previous, width, k, stride=2, batch_norm=i > 0,
                                  activation="relu", **common))
            previous = width
        decoder = []
        skip_widths = (in_channels,) + widths[:-1]
        for i in reversed(range(depth)):  # decoder step that joins the skip of level i
            last = i == 0
            width = out_channels if last else skip_widths[i]
            decoder.append(_Block(previous + skip_widths[i], width, 3, stride=1,
                                  batch_norm=not last, activation=None if last else "leaky_relu",
                                  **common))
            previous = width
        self.encoder = nnx.List(encoder)
        self.decoder = nnx.List(decoder)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> PConvUNet:
        """Builds the network from `config.model` (keys and defaults:
        `pconv_jax/configs/default.py`)."""
        return cls(depth=config.depth,
                   widths=paper_widths(config.depth, config.base_width, config.max_width),
                   partial=config.partial, hole_fill=config.hole_fill,
                   bn_momentum=config.bn_momentum, dtype=jnp.dtype(config.dtype),
                   remat=config.remat, input_norm=config.get("input_norm", "none"), rngs=rngs)

    def check_inputs(self, image: jax.Array, mask: jax.Array) -> None:
        """Raises ValueError for sizes the network cannot take or a mask that does not fit."""
        if image.ndim != 4 or image.shape[-1] != self.in_channels:
            raise ValueError(f"image must be (N, H, W, {self.in_channels}), got {image.shape}")
        multiple = 2**self.depth
        for axis, size in (("height", image.shape[1]), ("width", image.shape[2])):
            if size % multiple:
                raise ValueError(
                    f"image {axis} {size} is not a multiple of 2**depth = {multiple} "
                    f"(depth {self.depth}); the nearest valid sizes are "
                    f"{_nearest_valid_sizes(size, multiple)}: crop, resize or pad the image")
        if (mask.ndim != 4 or mask.shape[:3] != image.shape[:3]
                or mask.shape[-1] not in (1, image.shape[-1])):
            raise ValueError(
                f"mask of shape {mask.shape} does not fit image of shape {image.shape}: expected "
                f"{image.shape[:3] + (1,)} or {image.shape}")

    def _apply(self, block, x, mask, frozen_bn: bool):
        """Runs one block; with `remat`, its activations are recomputed in the backward pass."""
        if self.remat:
            return nnx.remat(_run_block, static_argnums=(3,))(block, x, mask, frozen_bn)
        return _run_block(block, x, mask, frozen_bn)

    def encode(self, image: jax.Array, mask: jax.Array) -> list[tuple[jax.Array, jax.Array | None]]:
        """(features, mask) of the input and of every encoder level, shallowest first.

        The masks are binary (N, h, w, 1); in the baseline (`partial=False`) they are None below
        the input."""
        self.check_inputs(image, mask)
        mask = (mask > MASK_THRESHOLD).astype(jnp.float32)  # exact in any dtype
        x = image.astype(param_dtype(self.dtype))
        if not self.partial:  # the baseline sees holes filled with a constant
            x = jnp.where(mask > 0, x, jnp.asarray(self.hole_fill, x.dtype))
        x = self._normalize(x).astype(self.dtype)
        levels = [(x, mask)]
        for block in self.encoder:
            x, mask = self._apply(block, x, mask, self.freeze_encoder_bn)
            levels.append((x, mask))
        return levels

    def __call__(self, image: jax.Array, mask: jax.Array, *, return_mask: bool = False
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The raw output; with `return_mask`, also the final mask (N, H, W, 1).

        The final mask is 0 where no valid pixel lies within the network's receptive field:
        the output there is exactly 0 (see `pconv_jax.inference.model_inpainter` for filling
        it). The baseline (`partial=False`) reaches every pixel: its final mask is all ones.
        """
        levels = self.encode(image, mask)
        x, mask = levels.pop()
        for block in self.decoder:
            skip_x, skip_mask = levels.pop()
            x = _upsample2x(x)
            if self.partial:
                x, mask = self._apply(block, [x, skip_x], [_upsample2x(mask), skip_mask], False)
            else:
                x, _ = self._apply(block, [x, skip_x], None, False)
        output = self._denormalize(x.astype(param_dtype(self.dtype)))
        if not return_mask:
            return output
        if not self.partial:
            mask = jnp.ones(x.shape[:3] + (1,), jnp.float32)
        return output, mask

    def _stats(self, dtype) -> tuple[jax.Array, jax.Array] | None:
        stats = INPUT_NORMS[self.input_norm]
        if stats is None:
            return None
        return jnp.asarray(stats[0], dtype), jnp.asarray(stats[1], dtype)

    def _normalize(self, pixels: jax.Array) -> jax.Array:
        """[0, 1] pixels -> the network's input space."""
        stats = self._stats(pixels.dtype)
        return pixels if stats is None else (pixels - stats[0]) / stats[1]

    def _denormalize(self, output: jax.Array) -> jax.Array:
        """The network's output space -> [0, 1] pixels."""
        stats = self._stats(output.dtype)
        return output if stats is None else output * stats[1] + stats[0]


def composite(output: jax.Array, image: jax.Array, mask: jax.Array) -> jax.Array:
    """I_comp = M * I_gt + (1 - M) * I_out: known pixels from the input, holes from the network."""
    mask = (mask > MASK_THRESHOLD).astype(output.dtype)
    return mask * image.astype(output.dtype) + (1.0 - mask) * output


def encoder_batchnorm_filter(path, _value) -> bool:
    """True for the encoder's BatchNorm scale and bias (an optax mask / nnx filter on paths)."""
    names = jax.tree_util.keystr(path, simple=True, separator="/").split("/")
    return "encoder" in names and "bn" in names
