"""Every way to inpaint, by name: the one registry that `eval.py`, `inpaint.py` and the app use.

`build(name, ...)` makes a `Method` from its `REGISTRY` entry: an `Inpainter`
(`pconv_jax.inpainter`: batches of images in [0, 1] and masks, 1 = valid -> composites) with
the label tables and the app show, the side a network was trained at (`fill.fill_photo` crops
and scales photos to it) and whether it is a toy. Adding a method is one entry, e.g.

    REGISTRY["blur"] = Entry("Gaussian blur", lambda request: blur_inpainter,
                             note="smooth colour from around the hole")

An entry's `build` takes a `Request` (the settings, a workdir, a checkpoint step) and returns an
inpainter (wrapped as a `Method` titled as the entry) or a whole `Method`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from pconv_jax.evaluation import baselines
from pconv_jax.inference.model_inpainter import PadSide, inpaint_image, round_up
from pconv_jax.inpainter import Inpainter

# A network trained on smaller images than this, or for fewer steps, is a toy (the paper trains
# at 256 and 512 px, for hundreds of thousands of steps): the app says so next to its name.
REAL_TRAINING_SIDE = 256
REAL_TRAINING_STEPS = 5000


@dataclasses.dataclass
class Method:
    """A built way to inpaint; calling it fills one image (H, W, 3) with its mask (H, W, 1)."""
    name: str                         # its registry name
    label: str                        # its row in tables, its entry in the app's selector
    inpaint: Inpainter                # batches -> composites
    training_size: int | None = None  # a network's training side: it fills best at that scale
    toy: bool = False                 # fills no one would keep (a demo-sized network)
    note: str = ""                    # what to expect from it, in a few words
    step: int | None = None           # a network's checkpoint step

    def __call__(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return inpaint_image(self.inpaint, image, valid)


@dataclasses.dataclass(frozen=True)
class Request:
    """What a method is built from."""
    # The settings: config.eval's for the classical methods, the network's config for 'model'
    # (default: the workdir's config.json).
    config: ml_collections.ConfigDict | None = None
    workdir: str | None = None        # a network's training workdir
    checkpoint: int | None = None     # a network's checkpoint step (default: the latest)
    network_name: str | None = None   # a network's name in its label (default: the workdir's)
    pad_side: PadSide = round_up      # a network's padded sides (`model_inpainter.bucket_side`)
    warn: bool = True                 # a network warns about holes beyond its reach


@dataclasses.dataclass(frozen=True)
class Entry:
    """How one method is built."""
    title: str
    build: Callable[[Request], Inpainter | Method]
    note: str = ""
    from_workdir: bool = False  # built from a training workdir (a network), not from settings


def _eval_setting(request: Request, key: str, default):
    return request.config.eval.get(key, default) if request.config is not None else default


def is_toy(training_size: int, step: int) -> bool:
    """Whether a network's fills are not meant to look right: trained on small images, or
    briefly."""
    return training_size < REAL_TRAINING_SIDE or step < REAL_TRAINING_STEPS


def _network(request: Request) -> Method:
    """The workdir's network, restored from its checkpoint."""
    if not request.workdir:
        raise ValueError("--workdir is required with --method model (it holds the checkpoints)")
    from pconv_jax import config as config_lib
    from pconv_jax.inference.model_inpainter import ModelInpainter
    from pconv_jax.training import checkpoints
    config = request.config or config_lib.load_workdir_config(request.workdir)
    model, step = checkpoints.restore_model(config, request.workdir, step=request.checkpoint)
    size = int(config.data.image_size)
    kind = "partial" if config.model.get("partial", True) else "ordinary"
    name = request.network_name or os.path.basename(os.path.normpath(request.workdir))
    toy = is_toy(size, step)
    note = (f"a toy: trained {step} steps on {size}x{size} images; PatchMatch fills photos "
            "better" if toy
            else f"trained at {size}x{size}; photos are filled around their holes at that scale")
    return Method("model", f"{name} ({kind} convolutions, step {step})",
                  ModelInpainter(model, warn=request.warn, pad_side=request.pad_side),
                  training_size=size, toy=toy, note=note, step=step)


def _patchmatch(request: Request) -> Inpainter:
    baselines.patchmatch_library()  # a missing library fails here, before any image is read
    return functools.partial(baselines.inpaint_patchmatch,
                             patch_radius=_eval_setting(request, "patchmatch_patch_radius", 3),
                             seed=_eval_setting(request, "patchmatch_seed", 0))


def _opencv(flavour: str, request: Request) -> Inpainter:
    return functools.partial(baselines.inpaint_opencv, method=flavour,
                             radius=_eval_setting(request, "inpaint_radius", 3))


REGISTRY: dict[str, Entry] = {
    "model": Entry("network", _network, "the trained network", from_workdir=True),
    "patchmatch": Entry("PatchMatch", _patchmatch,
                        "copies patches of the photo: sharp texture, seconds on a large photo"),
    "telea": Entry("OpenCV Telea", functools.partial(_opencv, "telea"),
                   "smooth colour from the hole's border: thin strokes only"),
    "ns": Entry("OpenCV Navier-Stokes", functools.partial(_opencv, "ns"),
                "smooth colour from the hole's border: thin strokes only"),
}
NAMES = tuple(REGISTRY)  # what `--method` takes
SETTINGS_ONLY = tuple(name for name, entry in REGISTRY.items() if not entry.from_workdir)


def build(name: str, request: Request | None = None, **settings) -> Method:
    """The method `name` of REGISTRY, built from `request` (or a Request of `settings`)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    built = entry.build(request or Request(**settings))
    if isinstance(built, Method):
        return built
    return Method(name, entry.title, built, note=entry.note)
