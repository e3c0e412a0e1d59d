"""Inpaint your own photos with a trained network (or OpenCV's classical methods).

One image::

    python -m pconv_jax.inference.inpaint --workdir WORKDIR --image photo.jpg --mask mask.png --out result.png

A folder (each image is paired with the mask of the same file name stem, e.g. a.jpg <-> a.png)::

    python -m pconv_jax.inference.inpaint --workdir WORKDIR --image photos/ --mask masks/ --out results/

Masks: by default white = hole (the NVIDIA test-set convention); `--mask-holes black` for masks
drawn the other way. Pixel values >= 128 count as white. A mask of another size than its image
is resized nearest-neighbour (with a warning).

Any image size: the network needs sides that are multiples of 2**depth, so the image *and its
mask* are mirror-padded (symmetric) up to the next multiple and the result is cropped back. A padded
pixel is thus valid exactly where the pixel it mirrors is valid, so the network sees plausible
context at the border and never has to invent the padding. The output is the composite: the
known pixels are the input's, the holes the network's.

The model is rebuilt from `--config` (a config file, `path.py` or `path.py:arg`), or from the
config saved in the workdir by training; the latest checkpoint is restored (or `--checkpoint`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

import cv2
import ml_collections
import numpy as np
from absl import app, flags
from tqdm import tqdm

from pconv_jax import cli
from pconv_jax import config as config_lib
from pconv_jax.evaluation.table1 import METHODS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str) -> np.ndarray:
    """An RGB image (H, W, 3) float32 in [0, 1]; a clear error if it cannot be read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist")
    pixels = cv2.imread(path, cv2.IMREAD_COLOR)
    if pixels is None:
        raise ValueError(f"cannot decode image {path!r}: not an image format OpenCV reads")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def read_mask(path: str, size: tuple[int, int], holes: str = "white") -> np.ndarray:
    """A mask (H, W, 1) float32 with 1 = valid, 0 = hole, at `size` (nearest-neighbour).

    `holes`: 'white' (pixels >= 128 are holes, the NVIDIA test convention) or 'black'.
    """
    if holes not in ("white", "black"):
        raise ValueError(f"mask holes must be 'white' or 'black', got {holes!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path!r} does not exist")
    pixels = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"cannot decode mask {path!r}: not an image format OpenCV reads")
    if pixels.shape != tuple(size):
        warnings.warn(f"mask {path!r} is {pixels.shape[1]}x{pixels.shape[0]} but the image is "
                      f"{size[1]}x{size[0]}; resizing the mask nearest-neighbour", stacklevel=2)
        pixels = cv2.resize(pixels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    white = pixels >= 128
    valid = ~white if holes == "white" else white
    return valid.astype(np.float32)[..., None]


def write_image(path: str, image: np.ndarray) -> None:
    """Writes an RGB float image in [0, 1] (format from the extension)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if not cv2.imwrite(path, cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {path!r}: use an image extension such as .png or .jpg")


def pad_to_multiple(image: np.ndarray, mask: np.ndarray, multiple: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror-pads image and mask (bottom and right) to sides that are multiples of `multiple`."""
    h, w = image.shape[:2]
    pad = ((0, -h % multiple), (0, -w % multiple), (0, 0))
    # 'symmetric' repeats the edge pixel and, unlike 'reflect', works for 1-pixel-wide images.
    return np.pad(image, pad, mode="symmetric"), np.pad(mask, pad, mode="symmetric")


def inpaint_image(fill, image: np.ndarray, mask: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Composite (H, W, 3) of one image: pads to `multiple`, fills with `fill`, crops back.

    `fill`: an inpainter taking (1, H', W', 3) images and (1, H', W', 1) masks (1 = valid)
    and returning composites, e.g. `table1.model_inpainter(model)`.
    """
    h, w = image.shape[:2]
    padded_image, padded_mask = pad_to_multiple(image, mask, multiple)
    result = np.asarray(fill(padded_image[None], padded_mask[None]))[0, :h, :w]
    return np.where(mask > 0.5, image, result)  # known pixels exactly as given


def side_by_side(image: np.ndarray, mask: np.ndarray, result: np.ndarray,
                 gap: int = 4) -> np.ndarray:
    """A panel [input with holes in white | result | original] with white gaps between."""
    holes_white = np.where(mask > 0.5, image, 1.0)
    spacer = np.ones((image.shape[0], gap, 3), np.float32)
    return np.concatenate([holes_white, spacer, result, spacer, image], axis=1)


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config training saved in the workdir (config.json); a clear error if there is none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in workdir {workdir!r}: pass --config, the "
                                f"config file the model was trained with")
    return config_lib.load_config(path)


def pair_folder(image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    """(image path, mask path) pairs matched by file name stem; an error names unmatched images."""
    def by_stem(directory):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory!r} is not a directory")
        return {os.path.splitext(name)[0]: os.path.join(directory, name)
                for name in sorted(os.listdir(directory))
                if name.lower().endswith(IMAGE_EXTENSIONS)}
    images, masks = by_stem(image_dir), by_stem(mask_dir)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir!r}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise FileNotFoundError(f"no mask in {mask_dir!r} for image(s) {missing[:10]}: a mask "
                                f"must have the same file name stem as its image")
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def build_inpainter(method: str, workdir: str | None, config_spec: str | None,
                    checkpoint: int | None, radius: int = 3):
    """(inpainter, size multiple) for 'model' (restored from the workdir), 'telea' or 'ns'."""
    from pconv_jax.evaluation import table1
    if method != "model":
        return table1.classical_inpainter(method, radius), 1
    if not workdir:
        raise ValueError("--workdir is required with --method model (it holds the checkpoints)")
    from pconv_jax.training import checkpoints
    config = config_lib.load_config(config_spec) if config_spec else workdir_config(workdir)
    model, _ = checkpoints.restore_model(config, workdir, step=checkpoint)
    return table1.model_inpainter(model), 2**model.depth


def define_flags() -> None:
    """The command's flags (defined by the command only, so that importing this module doesn't)."""
    flags.DEFINE_string("image", None, "an image file, or a folder of images")
    flags.DEFINE_string("mask", None, "a mask file, or a folder of masks")
    flags.DEFINE_string("out", None, "output file, or folder in folder mode")
    flags.DEFINE_string("workdir", None, "training workdir (checkpoints, config.json)")
    flags.DEFINE_string("config", None, "config file (path.py[:arg] or config.json) if the "
                        "workdir has none")
    flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: latest)")
    flags.DEFINE_enum("mask-holes", "white", ["white", "black"], "which mask colour marks holes")
    flags.DEFINE_string("panel", None, "single image: also write [input with holes | result | "
                        "original] to this file")
    flags.DEFINE_enum("method", "model", list(METHODS),
                      "the network, or OpenCV's Telea / Navier-Stokes inpainting")


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

    fill, multiple = build_inpainter(args.method, args.workdir, args.config, args.checkpoint)
    for image_path, mask_path in tqdm(pairs, unit="image", file=sys.stderr,
                                      disable=not folder_mode):
        image = read_image(image_path)
        mask = read_mask(mask_path, image.shape[:2], args["mask-holes"].value)
        result = inpaint_image(fill, image, mask, multiple)
        out = (os.path.join(out_arg, os.path.splitext(os.path.basename(image_path))[0] + ".png")
               if folder_mode else out_arg)
        write_image(out, result)
        if args.panel and not folder_mode:
            write_image(args.panel, side_by_side(image, mask, result))
    if not folder_mode:
        print(f"wrote {out_arg}")
    else:
        print(f"wrote {len(pairs)} images to {out_arg}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
