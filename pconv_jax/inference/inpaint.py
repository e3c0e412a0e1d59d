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

A network fills each photo where its holes look like its training holes (`fill.fill_photo`):
a photo larger than the side it was trained at (the workdir's `data.image_size`) is filled crop
by crop around its holes, with context around each, and a crop larger than that side is filled
from a copy downscaled to it; only the filled pixels are scaled back up and pasted. PatchMatch
and OpenCV's methods fill the whole photo up to `--max_side` (default 1024, as the web app) and
crop by crop beyond. Either way memory and time follow the holes, not the photo, and only hole
pixels change. See `model_inpainter` for odd sizes and holes beyond the network's reach.

The model is rebuilt from `--config` (a config file, `path.py` or `path.py:arg`), or from the
config saved in the workdir by training; the latest checkpoint is restored (or `--checkpoint`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from tqdm import tqdm

from pconv_jax import cli
from pconv_jax import config as config_lib
from pconv_jax.convention import MASK_THRESHOLD
from pconv_jax.data import images
from pconv_jax.data.images import IMAGE_EXTENSIONS
from pconv_jax.inference import fill, methods, model_inpainter


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


def side_by_side(image: np.ndarray, mask: np.ndarray, result: np.ndarray,
                 gap: int = 4) -> np.ndarray:
    """A panel [input with holes in white | result | original] with white gaps between."""
    holes_white = np.where(mask > MASK_THRESHOLD, image, 1.0)
    spacer = np.ones((image.shape[0], gap, 3), np.float32)
    return np.concatenate([holes_white, spacer, result, spacer, image], axis=1)


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
    flags.DEFINE_enum("method", "model", list(methods.NAMES),
                      "the network, PatchMatch, or OpenCV's Telea / Navier-Stokes inpainting")
    flags.DEFINE_integer("max_side", fill.MAX_SIDE, "photos with a longer side are filled crop "
                         "by crop around the holes (bounds memory and time); a network works "
                         "at most at the side it was trained at")


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

    config = config_lib.load_config(args.config) if args.config else None
    # Bucketed padding: crops of similar sizes reuse one compiled network.
    method = methods.build(args.method, config=config, workdir=args.workdir,
                           checkpoint=args.checkpoint, pad_side=model_inpainter.bucket_side)
    for image_path, mask_path in tqdm(pairs, unit="image", file=sys.stderr,
                                      disable=not folder_mode):
        image, mask = read_pair(image_path, mask_path, args.mask_holes)
        result = fill.fill_photo(method, image, mask, args.max_side)
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
