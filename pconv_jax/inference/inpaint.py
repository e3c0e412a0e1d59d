r"""Inpaint your own photos with a trained network (or PatchMatch, or OpenCV's methods).

One image::

    python -m pconv_jax.inference.inpaint --workdir WORKDIR --image photo.jpg --mask mask.png \
        --out result.png

A folder (each image is paired with the mask of the same file name stem, e.g. a.jpg <-> a.png)::

    python -m pconv_jax.inference.inpaint --workdir WORKDIR --image photos/ --mask masks/ \
        --out results/

Masks: by default white = hole (the NVIDIA test-set convention); `--mask_holes black` for masks
drawn the other way. Pixel values >= 128 count as white. A mask of another size than its image
is resized nearest-neighbour (with a warning). A mask without any known pixel is refused, and so
is a mask without any hole pixel (nothing to inpaint: check `--mask_holes`).

Files are read by `pconv_jax.data.images`: photos are turned upright by their EXIF orientation, a
truncated or corrupt file is refused with its name. In folder mode two files with the same stem
(`a.jpg` and `a.png`) are refused, since either could be meant. An output that would overwrite
an input (`--out` or `--panel` equal to `--image` or `--mask`, or inside an input folder), and a
`--mask` that is the `--image` itself (the same file or folder), are refused before anything is
loaded.

Any image size: the network needs sides that are multiples of 2**depth, so the image *and its
mask* are mirror-padded (symmetric) up to the next multiple and the result is cropped back. A padded
pixel is thus valid exactly where the pixel it mirrors is valid, so the network sees plausible
context at the border and never has to invent the padding. The output is the composite: the
known pixels are the input's, the holes the network's.

Large photos: a photo with a side above `--max_side` (default 1024, as the web app) is filled
crop by crop around its holes, with context around each, as the web app does
(`app.fill_photo`): the network never sees more than `--max_side` pixels a side, so memory and
time follow the holes, not the photo. A hole region larger than `--max_side` is filled from a
downscaled copy. Only hole pixels change.

Holes beyond the network's reach: a hole pixel farther from every known pixel than the
network's receptive field gets no value from the network (its final mask is 0, its output
exactly 0: black). Such pixels are filled from the same network run on copies halved until
every pixel is reached (a half-size pixel is known if any of its 2x2 pixels is, with their
mean), upsampled nearest-neighbour; only the unreached pixels take these values, and a warning
gives their share of the hole pixels (the photo's own: padding is not counted).

The model is rebuilt from `--config` (a config file, `path.py` or `path.py:arg`), or from the
config saved in the workdir by training; the latest checkpoint is restored (or `--checkpoint`).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from tqdm import tqdm

from pconv_jax import cli
from pconv_jax import config as config_lib
from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.data import images
from pconv_jax.data.images import IMAGE_EXTENSIONS
from pconv_jax.evaluation.table1 import METHODS
from pconv_jax.network.unet import composite


def read_pair(image_path: str, mask_path: str, holes: str = "white"
              ) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (H, W, 3) in [0, 1], mask float32 (H, W, 1), 1 = valid) of one pair.

    The mask is resized nearest-neighbour to the image (with a warning); a mask without any
    known pixel is refused (there is nothing to inpaint from), and so is one without any hole
    pixel (there is nothing to inpaint).
    """
    image = images.to_float(images.read_image(image_path))
    mask = images.read_mask(mask_path, holes, image.shape[:2], warn_if_resized=True)
    if not (mask > MASK_THRESHOLD).any():
        raise ValueError(f"mask {mask_path!r} marks every pixel as a hole: there are no known "
                         f"pixels to inpaint from (check --mask_holes)")
    if (mask > MASK_THRESHOLD).all():
        raise ValueError(f"mask {mask_path!r} has no hole pixel ({holes} = hole): there is "
                         f"nothing to inpaint (check --mask_holes)")
    return image, mask


def round_up(side: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `side`."""
    return -(-side // multiple) * multiple


def pad_to_size(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-pads image and mask (bottom and right) to `size` (H, W).

    Single (H, W, C) arrays or batches (N, H, W, C).
    """
    h, w = image.shape[-3:-1]
    pad = ((0, 0),) * (image.ndim - 3) + ((0, size[0] - h), (0, size[1] - w), (0, 0))
    # 'symmetric' repeats the edge pixel and, unlike 'reflect', works for 1-pixel-wide images.
    return np.pad(image, pad, mode="symmetric"), np.pad(mask, pad, mode="symmetric")


def pad_to_multiple(image: np.ndarray, mask: np.ndarray, multiple: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-pads image and mask (bottom and right) to sides that are multiples of `multiple`."""
    h, w = image.shape[-3:-1]
    return pad_to_size(image, mask, (round_up(h, multiple), round_up(w, multiple)))


def inpaint_image(fill, image: np.ndarray, mask: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Composite (H, W, 3) of one image: pads to `multiple`, fills with `fill`, crops back.

    `fill`: an inpainter taking (1, H', W', 3) images and (1, H', W', 1) masks (1 = valid)
    and returning composites, e.g. `ModelInpainter(model)`.
    """
    h, w = image.shape[:2]
    padded_image, padded_mask = pad_to_multiple(image, mask, multiple)
    result = np.asarray(fill(padded_image[None], padded_mask[None]))[0, :h, :w]
    return np.where(mask > MASK_THRESHOLD, image, result)  # known pixels exactly as given


def side_by_side(image: np.ndarray, mask: np.ndarray, result: np.ndarray,
                 gap: int = 4) -> np.ndarray:
    """A panel [input with holes in white | result | original] with white gaps between."""
    holes_white = np.where(mask > MASK_THRESHOLD, image, 1.0)
    spacer = np.ones((image.shape[0], gap, 3), np.float32)
    return np.concatenate([holes_white, spacer, result, spacer, image], axis=1)


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config training saved in the workdir (config.json), validated; a clear error naming
    the file and the setting if there is none or it is damaged."""
    return config_lib.load_workdir_config(workdir)


def pair_folder(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    """(image path, mask path) pairs matched by file name stem.

    Errors name images without a mask and stems held by two files of one folder.
    """
    def by_stem(directory):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory!r} is not a directory")
        found: dict[str, list[str]] = {}
        for name in sorted(os.listdir(directory)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.setdefault(os.path.splitext(name)[0], []).append(name)
        twice = {stem: names for stem, names in found.items() if len(names) > 1}
        if twice:
            listed = "; ".join(" and ".join(names) for names in list(twice.values())[:10])
            raise ValueError(f"{directory!r} holds files with the same name stem ({listed}): "
                             f"files are paired by stem, so rename or remove one of each")
        return {stem: os.path.join(directory, names[0]) for stem, names in found.items()}
    images, masks = by_stem(image_dir), by_stem(mask_dir)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir!r}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise FileNotFoundError(f"no mask in {mask_dir!r} for image(s) {missing[:10]}: a mask "
                                f"must have the same file name stem as its image")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def check_outputs(image: str, mask: str, out: str, panel: str | None = None) -> None:
    """Refuses outputs that would overwrite an input (equal files, or inside an input folder),
    and a mask that is the image itself (the same file, or the same folder)."""
    def same(a: str, b: str) -> bool:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)

    def inside(path: str, folder: str) -> bool:
        real, root = os.path.realpath(path), os.path.realpath(folder)
        return os.path.commonpath([real, root]) == root

    if same(image, mask):
        raise ValueError(f"--mask {mask!r} is the --image {image!r} itself: its bright pixels "
                         f"would be taken for holes; pass the mask "
                         f"{'folder' if os.path.isdir(mask) else 'file'} (white = hole)")
    outputs = {"--out": out} | ({"--panel": panel} if panel else {})
    inputs = {"--image": image, "--mask": mask}
    for out_flag, path in outputs.items():
        for in_flag, source in inputs.items():
            if os.path.isdir(source) and inside(path, source):
                raise ValueError(f"{out_flag} {path!r} lies in the input folder {in_flag} "
                                 f"{source!r}: choose an output outside the inputs")
            if same(path, source):
                raise ValueError(f"{out_flag} {path!r} is the input {in_flag} {source!r} and "
                                 f"would overwrite it: choose another output")
    if panel and same(out, panel):
        raise ValueError(f"--panel {panel!r} is the same file as --out")


PadSide = Callable[[int, int], int]  # (side, multiple) -> padded side, a multiple of `multiple`


class ModelInpainter:
    """The network as an inpainter: composites (N, H, W, 3) in [0, 1], any H and W.

    Images (N, H, W, 3) in [0, 1] and masks (N, H, W, 1), 1 = valid, are mirror-padded to
    sides `pad_side(side, 2**depth)` (default: the next multiple of 2**depth). Hole pixels the
    network does not reach (final mask 0) are filled from the network run on halved copies,
    recursively, upsampled nearest-neighbour. `hole_pixels` and `unreached_pixels` count over
    all calls, the given pixels only (not the padding); with `warn`, each call that filled
    unreached pixels says so with their share.
    """

    def __init__(self, model: nnx.Module, *, warn: bool = True, pad_side: PadSide = round_up):
        model.eval()
        graphdef, state = nnx.split(model)
        self.multiple = 2**model.depth
        self.pad_side = pad_side
        self.warn = warn
        self.hole_pixels = 0
        self.unreached_pixels = 0

        @jax.jit
        def run(state, images, masks):
            net = nnx.merge(graphdef, state)
            output, final_mask = net(images, masks, return_mask=True)
            return jnp.clip(composite(output, images, masks), 0.0, 1.0), final_mask

        self._run = lambda images, masks: run(state, images, masks)

    @property
    def unreached_share(self) -> float:
        """Unreached hole pixels / hole pixels, over all calls so far."""
        return self.unreached_pixels / max(self.hole_pixels, 1)

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        valid = np.all(np.asarray(masks) > MASK_THRESHOLD, axis=-1, keepdims=True)
        empty = np.flatnonzero(~valid.any(axis=(1, 2, 3)))
        if empty.size:
            raise ValueError(f"mask {int(empty[0])} of the batch marks every pixel as a hole: "
                             f"there are no known pixels to inpaint from")
        result, unreached = self._fill(images, valid)
        holes = int((~valid).sum())
        self.hole_pixels += holes
        self.unreached_pixels += unreached
        if unreached and self.warn:
            warnings.warn(f"{unreached / holes:.1%} of the hole pixels ({unreached} px) lie "
                          f"beyond the network's reach; filled from downscaled copies",
                          stacklevel=2)
        return result

    def _fill(self, images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
        """(composites, count of unreached pixels) of images and boolean masks (True = valid)."""
        h, w = images.shape[1:3]
        size = self.pad_side(h, self.multiple), self.pad_side(w, self.multiple)
        padded_images, padded_valid = pad_to_size(images, valid.astype(np.float32), size)
        result, final_mask = self._run(padded_images, padded_valid)
        result = np.asarray(result)[:, :h, :w]
        unreached = (np.asarray(final_mask)[:, :h, :w] <= MASK_THRESHOLD) & ~valid
        count = int(unreached.sum())
        if count == 0:
            return result, 0
        if h == 1 and w == 1:  # cannot happen with a known pixel; guards the recursion
            raise RuntimeError("the network reaches no pixel even at 1x1")
        small, _ = self._fill(*_halve(images, valid))
        upsampled = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)[:, :h, :w]
        return np.where(unreached, upsampled, result), count


def _halve(images: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-size copies: a pixel is known if any of its 2x2 pixels is, with their mean.

    Holes stay holes (a hole block stays a hole) and hole content is never read.
    """
    n, h, w, c = images.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    images, weights = np.pad(images, pad, mode="edge"), np.pad(valid, pad, mode="edge")
    weights = weights.astype(np.float32)

    def blocks(x):
        return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, x.shape[3]).sum(axis=(2, 4))

    count, total = blocks(weights), blocks(images * weights)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32), count > 0


def build_inpainter(method: str, workdir: str | None, config_spec: str | None,
                    checkpoint: int | None, radius: int = 3, pad_side: PadSide = round_up):
    """(inpainter, size multiple) for 'model' (restored from the workdir) or a classical method
    ('patchmatch', 'telea', 'ns', with the evaluation's default settings).

    The network pads its inputs itself (to `pad_side`, see `ModelInpainter`): its multiple is 1.
    """
    from pconv_jax.evaluation import baselines
    if method != "model":
        return baselines.classical_inpainter(method, radius=radius), 1
    if not workdir:
        raise ValueError("--workdir is required with --method model (it holds the checkpoints)")
    from pconv_jax.training import checkpoints
    config = config_lib.load_config(config_spec) if config_spec else workdir_config(workdir)
    model, _ = checkpoints.restore_model(config, workdir, step=checkpoint)
    return ModelInpainter(model, pad_side=pad_side), 1


def define_flags() -> None:
    """The command's flags (defined by the command only, so that importing this module doesn't)."""
    flags.DEFINE_string("image", None, "an image file, or a folder of images")
    flags.DEFINE_string("mask", None, "a mask file, or a folder of masks")
    flags.DEFINE_string("out", None, "output file, or folder in folder mode")
    flags.DEFINE_string("workdir", None, "training workdir (checkpoints, config.json)")
    flags.DEFINE_string("config", None, "config file (path.py[:arg] or config.json) if the "
                        "workdir has none")
    flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: latest)")
    flags.DEFINE_enum("mask_holes", "white", ["white", "black"], "which mask colour marks holes")
    flags.DEFINE_string("panel", None, "single image: also write [input with holes | result | "
                        "original] to this file")
    flags.DEFINE_enum("method", "model", list(METHODS),
                      "the network, PatchMatch, or OpenCV's Telea / Navier-Stokes inpainting")
    flags.DEFINE_integer("max_side", 1024, "photos with a longer side are filled crop by crop "
                         "around the holes (bounds memory and time)")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    missing = [f"--{name}" for name in ("image", "mask", "out") if not args[name].value]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (see --help)")
    image_arg, mask_arg, out_arg = args.image, args.mask, args.out
    folder_mode = os.path.isdir(image_arg)
    if folder_mode and not os.path.isdir(mask_arg):
        raise ValueError(f"--image {image_arg!r} is a folder, so --mask must be a folder too")
    pairs = (pair_folder(image_arg, mask_arg) if folder_mode else [(image_arg, mask_arg)])
    for image_path, mask_path in pairs:  # fail on a missing file before loading the model
        for path in (image_path, mask_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path!r} does not exist")
    check_outputs(args.image, args.mask, args.out, args.panel)
    if args.max_side < 64:
        raise ValueError(f"--max_side must be at least 64, got {args.max_side}")

    from pconv_jax.inference import app as web_app  # its crop-around-holes path
    fill, multiple = build_inpainter(args.method, args.workdir, args.config, args.checkpoint)
    method = functools.partial(inpaint_image, fill, multiple=multiple)
    for image_path, mask_path in tqdm(pairs, unit="image", file=sys.stderr,
                                      disable=not folder_mode):
        image, mask = read_pair(image_path, mask_path, args.mask_holes)
        result = web_app.fill_photo(method, image, mask, args.max_side)
        out = (os.path.join(out_arg, os.path.splitext(os.path.basename(image_path))[0] + ".png")
               if folder_mode else out_arg)
        images.write_image(out, result)
        if args.panel and not folder_mode:
            images.write_image(args.panel, side_by_side(image, mask, result))
    if not folder_mode:
        print(f"wrote {out_arg}")
    else:
        print(f"wrote {len(pairs)} images to {out_arg}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
