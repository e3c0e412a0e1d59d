"""Where images come from: the registry of data sources (`config.data.name`) and their parts.

`get(name)` returns the registered `DataSource`: its training and held-out images (each an
`ImageSource`, a random-access list of items with a loader returning uint8 RGB arrays
(H, W, 3)) and the check a run makes before it creates anything. Registered: the bundled demo
photographs, an image folder, TFDS datasets (read through `tfds.data_source` over their
ArrayRecord files: random access, no TensorFlow). Adding a source is one entry in `SOURCES`.

Importing this module loads no image, JAX or TensorFlow code (those are imported where they are
used): `pconv_jax.config` reads the registry's names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pconv_jax import files

if TYPE_CHECKING:
    import ml_collections
    import numpy as np

_log = logging.getLogger(__name__)

# Natural colour photographs shipped inside the scikit-image and scikit-learn wheels (no
# download). The last two are held out for evaluation.
DEMO_TRAIN = ("astronaut", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field",
              "china.jpg")
DEMO_HELDOUT = ("coffee", "flower.jpg")


class ImageSource:
    """A random-access list of images; `load(i)` returns uint8 (H, W, 3) RGB.

    Items that cannot be used (the loader returns None, or raises OSError or ValueError: a
    missing, corrupt or oversized file) are replaced by the next readable item (so a batch stays
    a pure function of its position), counted in `skipped` and announced once each with a
    warning that gives the reason.
    """

    def __init__(self, names: Sequence, loader: Callable[[Any], np.ndarray | None]):
        if not names:
            raise ValueError("an image source needs at least one image.")
        self.names = names if isinstance(names, range) else list(names)  # a range stays small
        self._loader = loader
        self._bad: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def skipped(self) -> int:
        """Number of distinct unreadable items met so far."""
        with self._lock:
            return len(self._bad)

    @property
    def skipped_names(self) -> frozenset[str]:
        """The distinct unreadable items met so far."""
        with self._lock:
            return frozenset(map(str, self._bad))

    def load(self, index: int) -> np.ndarray:
        for offset in range(len(self.names)):
            name = self.names[(index + offset) % len(self.names)]
            try:
                image, reason = self._loader(name), "it does not decode"
            except (OSError, ValueError) as error:
                image, reason = None, str(error)
            if image is not None:
                return image
            with self._lock:
                if name not in self._bad:
                    self._bad.add(name)
                    _log.warning("skipping unreadable image %s (%s; %d skipped so far)",
                                 name, reason, len(self._bad))
        raise ValueError(f"none of the {len(self.names)} images could be read.")

    def __getstate__(self) -> dict:  # picklable for worker processes (a lock is not)
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def subset(self, indices: range | Sequence[int]) -> ImageSource:
        """A source over some items, sharing this source's loader and skip count."""
        names = (self.names[indices.start:indices.stop:indices.step]
                 if isinstance(indices, range) else [self.names[i] for i in indices])
        sub = ImageSource(names, self._loader)
        sub._bad, sub._lock = self._bad, self._lock
        return sub


# ----------------------------------------------------------------------------- demo

def _load_demo_image(name: str) -> np.ndarray:
    from pconv_jax.data.images import to_rgb_uint8
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image
        return to_rgb_uint8(load_sample_image(name))
    import skimage.data
    image = getattr(skimage.data, name)()
    return to_rgb_uint8(image[0] if name == "stereo_motorcycle" else image)  # the left view


def demo_source(split: str) -> ImageSource:
    """The demo photographs of `split` ('train' or 'heldout'), held in memory."""
    names = {"train": DEMO_TRAIN, "heldout": DEMO_HELDOUT}.get(split)
    if names is None:
        raise ValueError(f"demo split must be 'train' or 'heldout', got {split!r}.")
    images = {name: _load_demo_image(name) for name in names}
    return ImageSource(list(names), images.get)


# ----------------------------------------------------------------------------- folder

def list_image_files(folder: str) -> list[str]:
    """Sorted relative paths of the image files (`IMAGE_EXTENSIONS`) under `folder` (recursive).

    Each real file is listed once, by its resolved path relative to the resolved folder (a link
    into another folder gives `../other/x.png`): a link loop or a second link to the same
    folder or file adds nothing, so no image can fall into both splits. Without links these are
    simply the files' relative paths. Files are not paired by name, so `a.jpg` beside `a.png`
    are two images.
    """
    from pconv_jax.data.images import IMAGE_EXTENSIONS
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist; set config.data.folder "
                                f"to a folder of {'/'.join(IMAGE_EXTENSIONS)} images.")
    top = os.path.realpath(folder)
    found: set[str] = set()
    visited: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the folders walked
    pending = [top]  # resolved folders
    while pending:
        directory = pending.pop()
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in visited:
            continue
        visited.add((status.st_dev, status.st_ino))
        try:
            with os.scandir(directory) as entries:
                entries = list(entries)
        except OSError as error:
            _log.warning("skipping unreadable folder %s (%s)", directory, error)
            continue
        for entry in entries:
            # A link is resolved; any other entry of a resolved folder already is.
            path = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
            if entry.is_dir():
                pending.append(path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.add(path)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {folder!r}.")
    return sorted(os.path.relpath(path, top) for path in found)


def split_folder(paths: Sequence[str], *, heldout_count: int = 0,
                 heldout_fraction: float = 0.0) -> tuple[list[str], list[str]]:
    """Splits paths into (train, heldout), deterministically.

    Files are ranked by a hash of their relative path, so the split of a file does not depend on
    which other files exist; the held-out files are the first of that ranking (in that order),
    the train files keep their sorted order. `heldout_fraction > 0` wins over `heldout_count`.
    """
    count = round(heldout_fraction * len(paths)) if heldout_fraction > 0 else heldout_count
    if not 0 <= count < len(paths):
        raise ValueError(f"cannot hold out {count} of {len(paths)} images; lower "
                         f"config.data.heldout_count or heldout_fraction.")
    ranked = sorted(paths, key=lambda p: hashlib.md5(p.encode("utf-8")).hexdigest())
    heldout = ranked[:count]
    held = set(heldout)
    return [p for p in paths if p not in held], heldout


def folder_source(folder: str, split: str, *, heldout_count: int = 0,
                  heldout_fraction: float = 0.0) -> ImageSource:
    """The images of `split` ('train' or 'heldout') of an image folder, decoded on demand."""
    from pconv_jax.data import images
    images.pixel_limit()  # a bad PCONV_MAX_PIXELS fails here, not as a skip of every file
    train, heldout = split_folder(list_image_files(folder), heldout_count=heldout_count,
                                  heldout_fraction=heldout_fraction)
    names = {"train": train, "heldout": heldout}[split]
    # Unreadable, truncated, corrupt or oversized files are skipped and counted by the source.
    return ImageSource([os.path.join(folder, p) for p in names], images.read_image)


# ----------------------------------------------------------------------------- data sources

class DataSource:
    """What the registry (`SOURCES`) holds for a `config.data.name`: the training and held-out
    images, and the check a run makes before it creates anything. Every method reads
    `config.data` (given as `data`) and nothing else.
    """

    name: str
    heldout_settings = ""  # the settings that hold out more images, named when too few are

    def check(self, data: ml_collections.ConfigDict) -> None:
        """Before a run creates a workdir or downloads: nothing if the source can be read (or
        prepared), else a clear error naming what is missing and the ways forward."""

    def train(self, data: ml_collections.ConfigDict) -> ImageSource:
        """The training images."""
        raise NotImplementedError

    def heldout(self, data: ml_collections.ConfigDict) -> ImageSource:
        """The held-out images, never trained on."""
        raise NotImplementedError

    def heldout_images(self, data: ml_collections.ConfigDict, count: int, size: int
                       ) -> list[np.ndarray]:
        """The held-out images evaluation uses, in order, uint8 (H, W, 3): at least the first
        `count` when there are as many (`heldout.load_eval_images` centre-crops them to the side
        `size` and keeps `count`)."""
        del size
        source = self.heldout(data)
        return [source.load(i) for i in range(min(count, len(source)))]


class DemoSource(DataSource):
    """The demo photographs (`DEMO_TRAIN`, `DEMO_HELDOUT`); evaluation uses grid crops of the
    held-out ones at their native resolution."""

    name = "demo"

    def train(self, data: ml_collections.ConfigDict) -> ImageSource:
        return demo_source("train")

    def heldout(self, data: ml_collections.ConfigDict) -> ImageSource:
        return demo_source("heldout")

    def heldout_images(self, data: ml_collections.ConfigDict, count: int, size: int
                       ) -> list[np.ndarray]:
        """Non-overlapping size×size crops on a grid over each held-out photograph (an image
        smaller than that is given whole, to be scaled up)."""
        source = self.heldout(data)
        crops = []
        for i in range(len(source)):
            image = source.load(i)
            if min(image.shape[:2]) < size:
                crops.append(image)
                continue
            rows, cols = image.shape[0] // size, image.shape[1] // size
            top = (image.shape[0] - rows * size) // 2
            left = (image.shape[1] - cols * size) // 2
            crops.extend(image[top + r * size:top + (r + 1) * size,
                               left + c * size:left + (c + 1) * size]
                         for r in range(rows) for c in range(cols))
        return crops


class FolderSource(DataSource):
    """The image files under config.data.folder, split by `split_folder`."""

    name = "folder"
    heldout_settings = "config.data.heldout_count or heldout_fraction"

    def _split(self, data: ml_collections.ConfigDict, split: str) -> ImageSource:
        return folder_source(data.folder, split, heldout_count=data.heldout_count,
                             heldout_fraction=data.heldout_fraction)

    def train(self, data: ml_collections.ConfigDict) -> ImageSource:
        return self._split(data, "train")

    def heldout(self, data: ml_collections.ConfigDict) -> ImageSource:
        return self._split(data, "heldout")

    def heldout_images(self, data: ml_collections.ConfigDict, count: int, size: int
                       ) -> list[np.ndarray]:
        """Unreadable held-out files are skipped, not replaced (no image is given twice)."""
        from pconv_jax.data.images import read_image
        images = []
        for path in self.heldout(data).names:
            if len(images) == count:
                break
            try:
                images.append(read_image(path))
            except (OSError, ValueError) as error:
                _log.warning("skipping unreadable held-out image %s (%s)", path, error)
        return images


# ----------------------------------------------------------------------------- TFDS

# What a first run of Places365 downloads, and CelebA-HQ's hand-made archive.
PLACES365_DOWNLOAD = ("train_256_places365standard.tar, 24.3 GiB, and val_256.tar, 0.5 GiB: a "
                      "24.9 GiB download, about 50 GiB of disk while TFDS prepares it")
CELEBA_HQ_HELP = ("CelebA-HQ (30,000 faces) cannot be downloaded by TFDS: build {archive} as "
                  "https://github.com/tkarras/progressive_growing_of_gans#preparing-datasets-"
                  "for-training describes and put it in config.data.manual_dir ({manual})")
DOWNLOAD_HOST_TIMEOUT = 10.0  # seconds to reach a download host before a run starts
_OTHER_WAYS = ("point config.data.tfds_data_dir at a prepared copy, or unpack the images and "
               "train with configs/folder.py --config.data.folder=DIR")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsSource(DataSource):
    """A TFDS dataset that TFDS downloads and prepares itself (as ArrayRecord files) when
    config.data.download is set, read at random through `tfds.data_source`. Images are read
    still encoded and decoded with OpenCV on demand (in the pipeline's threads).

    `heldout_split`: the split held out for evaluation; '' holds out the last
    config.data.heldout_count examples of 'train'. `download_host`, `download_size`: the host
    TFDS downloads from (its checksums file) and what a first run downloads, for `check`.
    `prepared_splits`: the only splits a download fetches and prepares, for a builder whose
    downloads are keyed by split and that has splits not read here (Places365's 4.4 GiB test
    archive); () prepares them all.
    """
    name: str
    title: str
    heldout_split: str = ""
    download_host: str = ""
    download_size: str = ""
    prepared_splits: tuple[str, ...] = ()

    @property
    def heldout_settings(self) -> str:
        return "" if self.heldout_split else "config.data.heldout_count"

    def splits(self, data: ml_collections.ConfigDict) -> tuple[str, str]:
        """(train split, held-out split), e.g. ('train[:-1000]', 'train[-1000:]')."""
        if self.heldout_split:
            return "train", self.heldout_split
        count = data.heldout_count
        if count < 1:
            raise ValueError(f"{self.title} has only a train split: config.data.heldout_count "
                             f"must be >= 1 to hold out its last examples for evaluation.")
        return f"train[:-{count}]", f"train[-{count}:]"

    def train(self, data: ml_collections.ConfigDict) -> ImageSource:
        return self._split(data, self.splits(data)[0])

    def heldout(self, data: ml_collections.ConfigDict) -> ImageSource:
        return self._split(data, self.splits(data)[1])

    def check(self, data: ml_collections.ConfigDict) -> None:
        """Nothing if the dataset is prepared; else a FileNotFoundError naming what is missing,
        how big it is, and the ways forward (let TFDS download it with config.data.download=True,
        point config.data.tfds_data_dir at a prepared copy, or train on the unpacked images with
        configs/folder.py). With config.data.download, a download host that cannot be reached is
        an OSError within `DOWNLOAD_HOST_TIMEOUT` (not minutes of retries). Downloads nothing and
        creates no folder.
        """
        builder = self._builder(data)
        if builder.is_prepared():
            return
        where = f"TFDS dataset {self.name} is not prepared in {str(builder.data_dir)!r}"
        self._check_unprepared(builder, data, where)

    def _check_unprepared(self, builder, data: ml_collections.ConfigDict, where: str) -> None:
        if not data.download:
            raise FileNotFoundError(
                f"{where}. Three ways forward: set config.data.download=True to let TFDS "
                f"download it ({self.download_size}); or {_OTHER_WAYS}.")
        import socket
        try:
            socket.create_connection((self.download_host, 80),
                                     timeout=DOWNLOAD_HOST_TIMEOUT).close()
        except OSError as err:
            raise OSError(f"{where} and its download host {self.download_host} cannot be "
                          f"reached ({err}): connect to the internet, or {_OTHER_WAYS}."
                          ) from None

    def _builder(self, data: ml_collections.ConfigDict):
        import tensorflow_datasets as tfds
        return tfds.builder(self.name, data_dir=data.tfds_data_dir or None)

    def _prepared_builder(self, data: ml_collections.ConfigDict):
        """The TFDS builder, prepared (downloading it if config.data.download allows); if not
        allowed, `check`'s error when it is not prepared."""
        import tensorflow_datasets as tfds

        if not data.download:
            self.check(data)
        builder = self._builder(data)
        if not data.download or builder.is_prepared():
            return builder
        if self.prepared_splits:
            builder._split_generators = only_splits(builder._split_generators,
                                                    self.prepared_splits)
        config = tfds.download.DownloadConfig(manual_dir=data.manual_dir or None)
        try:  # ArrayRecord: the random-access format `tfds.data_source` reads
            builder.download_and_prepare(download_config=config, file_format="array_record")
        except Exception as error:
            self._preparing_failed(builder, error)
            raise
        return builder

    def _preparing_failed(self, builder, error: Exception) -> None:
        """Raises a clearer error for a failed download or preparation, if there is one."""

    def _split(self, data: ml_collections.ConfigDict, split: str) -> ImageSource:
        """The images of a TFDS split; a copy prepared as TFRecord only is an error naming the
        command that converts it."""
        import tensorflow_datasets as tfds

        from pconv_jax.data import images

        builder = self._prepared_builder(data)
        try:
            examples = builder.as_data_source(split=split,
                                              decoders={"image": tfds.decode.SkipDecoding()})
        except NotImplementedError as error:  # no random-access format among the prepared ones
            raise FileNotFoundError(_tfrecord_help(self.name, str(builder.data_dir))) from error
        return ImageSource(range(len(examples)),
                           lambda i: images.decode_image_bytes(examples[i]["image"]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManualTfdsSource(TfdsSource):
    """A TFDS dataset that TFDS cannot download: its `archive` is made by hand (as
    `manual_help` says, a text with {archive} and {manual}) and put in config.data.manual_dir
    (default: <tfds_data_dir>/downloads/manual); then TFDS prepares it. `check` with
    config.data.download wants the archive there."""
    archive: str
    manual_help: str

    def _check_unprepared(self, builder, data: ml_collections.ConfigDict, where: str) -> None:
        manual = data.manual_dir or os.path.join(str(builder._data_dir_root), "downloads",
                                                 "manual")
        archive = os.path.join(manual, self.archive)
        help_text = self.manual_help.format(archive=self.archive, manual=manual)
        if not data.download:
            raise FileNotFoundError(f"{where}. {help_text}, then set config.data.download=True "
                                    f"to let TFDS prepare it; or {_OTHER_WAYS}.")
        if not os.path.isfile(archive):
            raise FileNotFoundError(f"{where} and {archive} does not exist. {help_text}; or "
                                    f"{_OTHER_WAYS}.")

    def _preparing_failed(self, builder, error: Exception) -> None:
        instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "") or ""
        raise RuntimeError(
            f"{self.title} cannot be downloaded automatically. Prepare it by hand as TFDS "
            f"describes below, placing the files in config.data.manual_dir (default: "
            f"<tfds_data_dir>/downloads/manual), then run again. Alternatively set "
            f"config.data.name='folder' and config.data.folder to a folder of {self.title} "
            f"images.\n\nTFDS instructions:\n{instructions}\nTFDS said: {error}") from error


class _SplitsDownloads:
    """A TFDS download manager that fetches only the archives of `splits` (a `download` of a
    dict keyed by split); the others are None and iterate as empty archives."""

    def __init__(self, manager, splits: Sequence[str]):
        self._manager, self._splits = manager, splits

    def download(self, urls):
        if not isinstance(urls, dict):
            return self._manager.download(urls)
        wanted = self._manager.download({k: v for k, v in urls.items() if k in self._splits})
        return {k: wanted.get(k) for k in urls}

    def iter_archive(self, path):
        return iter(()) if path is None else self._manager.iter_archive(path)

    def __getattr__(self, name: str):
        return getattr(self._manager, name)


def only_splits(split_generators: Callable, splits: Sequence[str]) -> Callable:
    """A builder's `_split_generators` that downloads and prepares only `splits`."""
    def generators(dl_manager):
        made = split_generators(_SplitsDownloads(dl_manager, splits))
        return [g for g in made if g.name in splits]
    return generators


# ----------------------------------------------------------------------------- the registry

# `config.data.name` -> its source. Adding a source is one entry here.
SOURCES: dict[str, DataSource] = {source.name: source for source in (
    DemoSource(),
    FolderSource(),
    TfdsSource(name="places365_small", title="Places365-Standard", heldout_split="validation",
               download_host="data.csail.mit.edu", download_size=PLACES365_DOWNLOAD,
               prepared_splits=("train", "validation")),
    ManualTfdsSource(name="celeb_a_hq/256", title="CelebA-HQ", archive="data256x256.tar",
                     manual_help=CELEBA_HQ_HELP),
    ManualTfdsSource(name="celeb_a_hq/512", title="CelebA-HQ", archive="data512x512.tar",
                     manual_help=CELEBA_HQ_HELP),
)}


def get(name: str) -> DataSource:
    """The registered source called `name` (`config.data.name`); an unknown name is a
    ValueError listing the registered ones."""
    source = SOURCES.get(name)
    if source is None:
        raise ValueError(f"config.data.name must be one of {tuple(SOURCES)}, got {name!r}.")
    return source


# ----------------------------------------------------------------------------- TFRecord copies

def _tfrecord_help(name: str, version_dir: str) -> str:
    return (f"TFDS dataset {name} in {version_dir} is prepared as TFRecord files only, which "
            f"cannot be read at random. Convert it once to ArrayRecord (written next to the "
            f"TFRecord files):\n"
            f"    python -m pconv_jax.data.sources to-array-record {version_dir}\n"
            f"or prepare it again as ArrayRecord in another config.data.tfds_data_dir.")


def convert_tfds_to_array_record(version_dir: str) -> int:
    """Writes an ArrayRecord copy of each TFRecord shard of a prepared TFDS dataset next to it
    and makes it the dataset's file format in its metadata; returns the shards written.

    The records (serialized examples) are copied as they are, in their order, so the dataset
    reads the same in either format.
    """
    import glob
    import json

    import tensorflow as tf
    from array_record.python.array_record_module import ArrayRecordWriter

    info_path = os.path.join(version_dir, "dataset_info.json")
    shards = sorted(glob.glob(os.path.join(glob.escape(version_dir), "*.tfrecord-*-of-*")))
    if not os.path.isfile(info_path) or not shards:
        raise FileNotFoundError(f"{version_dir!r} holds no prepared TFDS dataset in TFRecord "
                                f"files (dataset_info.json and *.tfrecord-*-of-* shards).")
    for shard in shards:
        folder, base = os.path.split(shard)
        target = os.path.join(folder, base.replace(".tfrecord-", ".array_record-"))
        writer = ArrayRecordWriter(target + ".incomplete", "group_size:1")  # random access
        for record in tf.data.TFRecordDataset(shard):
            writer.write(record.numpy())
        writer.close()
        os.replace(target + ".incomplete", target)  # a crash leaves no half shard behind
    with open(info_path) as f:
        info = json.load(f)
    # ArrayRecord becomes the main format: TFDS builders found by name read only that one
    # (they drop `alternativeFileFormats` when restoring the metadata).
    info["fileFormat"] = "array_record"
    info["alternativeFileFormats"] = sorted({*info.get("alternativeFileFormats", []),
                                             "tfrecord"} - {"array_record"})
    # Atomic: a full disk keeps the old file.
    files.write_text_atomically(info_path, json.dumps(info, indent=2))
    return len(shards)


def main(argv: Sequence[str]) -> None:
    """`python -m pconv_jax.data.sources to-array-record VERSION_DIR`, e.g.
    `~/tensorflow_datasets/places365_small/2.1.0`."""
    from absl import app
    if len(argv) != 3 or argv[1] != "to-array-record":
        raise app.UsageError("usage: python -m pconv_jax.data.sources to-array-record "
                             "VERSION_DIR (a TFDS dataset prepared as TFRecord)")
    count = convert_tfds_to_array_record(os.path.expanduser(argv[2]))
    print(f"wrote {count} ArrayRecord shards to {argv[2]}")


if __name__ == "__main__":
    from pconv_jax import cli
    cli.run(main)
