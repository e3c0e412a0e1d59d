"""Tests of the data sources' registry: every source, the error for an unknown name, a source
of one's own registered with one entry, the checks a run makes before it starts."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from pconv_jax import config as config_lib
from pconv_jax.data import heldout, sources
from tests.helpers.data import (
    data_config,
    equal_batches,
    eval_images,
    grey_levels,
    make_pipeline,
    solid_folder,
)
from tests.helpers.training import REPO, default_config, demo_config, load_config_file, shrink

NAMES = ("demo", "folder", "places365_small", "celeb_a_hq/256", "celeb_a_hq/512")


def test_the_registry_holds_every_source_under_its_name():
    assert tuple(sources.SOURCES) == NAMES
    for name in NAMES:
        assert sources.get(name).name == name
        assert isinstance(sources.get(name), sources.DataSource)
    assert set(config_lib.CHOICES["data.name"]) == set(NAMES)  # what config.validate accepts
    data = default_config().data
    data.heldout_count = 1000
    assert sources.get("places365_small").splits(data) == ("train", "validation")
    celeba = sources.get("celeb_a_hq/512")
    assert celeba.splits(data) == ("train[:-1000]", "train[-1000:]")
    assert celeba.archive == "data512x512.tar" and celeba.prepared_splits == ()
    data.heldout_count = 0
    with pytest.raises(ValueError, match="CelebA-HQ has only a train split: config.data."
                                         "heldout_count must be >= 1"):
        celeba.splits(data)


def test_an_unknown_source_is_one_error_listing_the_names():
    message = ("config.data.name must be one of ('demo', 'folder', 'places365_small', "
               "'celeb_a_hq/256', 'celeb_a_hq/512'), got 'imagenet'.")
    for attempt in (lambda: sources.get("imagenet"),
                    lambda: make_pipeline(data_config("imagenet")),
                    lambda: eval_images(data_config("imagenet"), 2)):
        with pytest.raises(ValueError) as err:
            attempt()
        assert str(err.value) == message
    with pytest.raises(ValueError, match="config.data.name must be one of 'demo', 'folder', "
                                         "'places365_small', .*got 'imagenet'"):
        config_lib.validate(data_config("imagenet"))


def test_importing_the_registry_loads_no_image_jax_or_tensorflow_code():
    heavy = ("numpy", "cv2", "PIL", "jax", "tensorflow", "tensorflow_datasets", "grain")
    code = (f"import sys, pconv_jax.config, pconv_jax.data.sources; "
            f"print([m for m in {heavy} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- one's own source

@dataclasses.dataclass(frozen=True)
class SolidGreys(sources.DataSource):
    """A source of one's own: 8 training images of grey levels 10, 20, ..., 80 and 2 held-out
    ones (200, 210); `ready=False` makes its check fail."""
    name: str = "solid"
    ready: bool = True

    def check(self, data):
        if not self.ready:
            raise FileNotFoundError("the solid greys are not ready")

    def train(self, data):
        return sources.ImageSource(range(8), lambda i: np.full((40, 50, 3), 10 * (i + 1),
                                                               np.uint8))

    def heldout(self, data):
        return sources.ImageSource(range(2), lambda i: np.full((40, 50, 3), 200 + 10 * i,
                                                               np.uint8))


def test_a_source_registered_with_one_entry_trains_and_evaluates(monkeypatch):
    monkeypatch.setitem(sources.SOURCES, "solid", SolidGreys())  # the one entry
    config = data_config("solid", size=16, batch=4)
    config.model.depth = 2  # 16 = 4 · 2**2
    config_lib.validate(config)  # a registered name is a valid config.data.name
    run = make_pipeline(config, seed=1)
    batches = [next(run) for _ in range(4)]  # two epochs of 8 images
    for epoch in (batches[:2], batches[2:]):
        assert set().union(*map(grey_levels, epoch)) == set(range(10, 90, 10))
    resumed = make_pipeline(config, seed=1)
    resumed.set_state({"position": 8})
    assert equal_batches(batches[2:], [next(resumed) for _ in range(2)])
    evaluation = eval_images(config, 2)
    assert evaluation.shape == (2, 16, 16, 3)
    assert {round(v * 255) for v in evaluation[:, 0, 0, 0]} == {200, 210}
    with pytest.raises(ValueError, match=r"^solid holds only 2 held-out images of size 16, 3 "
                                         r"were asked for; lower config.eval.num_images or hold "
                                         r"out more images\.$"):
        eval_images(config, 3)


def test_a_run_checks_its_source_before_it_creates_anything(monkeypatch, tmp_path):
    from pconv_jax.training.loop import train_and_evaluate
    monkeypatch.setitem(sources.SOURCES, "solid", SolidGreys(ready=False))
    config = demo_config()
    config.data.name = "solid"
    with pytest.raises(FileNotFoundError, match="the solid greys are not ready"):
        train_and_evaluate(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- held-out images

def test_too_few_held_out_images_name_the_settings_that_hold_out_more(tmp_path):
    config = data_config("folder", size=16, folder=solid_folder(tmp_path, range(10, 250, 20)),
                         heldout_count=2)
    with pytest.raises(ValueError, match=r"folder holds only 2 held-out images of size 16, 3 "
                                         r"were asked for; lower config.train.eval_batch_size "
                                         r"or hold out more images \(config.data.heldout_count "
                                         r"or heldout_fraction\)\.$"):
        heldout.load_eval_images(config.data, 3, 16, count_setting="config.train.eval_batch_size")
    assert sources.get("celeb_a_hq/256").heldout_settings == "config.data.heldout_count"
    assert sources.get("places365_small").heldout_settings == ""  # its own validation split


# ----------------------------------------------------------------------------- TFDS

def test_a_tfds_dataset_that_is_not_prepared_names_its_size_and_three_ways(tmp_path):
    data = shrink(load_config_file("places2")).data
    data.tfds_data_dir = str(tmp_path / "tfds")
    assert not data.download  # the default: no 29 GiB download unasked
    places = sources.get("places365_small")
    with pytest.raises(FileNotFoundError) as err:
        places.check(data)
    text = str(err.value)
    for part in ("places365_small is not prepared in", "24.9 GiB download",
                 "config.data.download=True", "config.data.tfds_data_dir",
                 "configs/folder.py --config.data.folder"):
        assert part in text, text
    # eval.py's path too, not the TFRecord message
    with pytest.raises(FileNotFoundError, match="places365_small is not prepared in .* Three ways"):
        places.heldout(data)
    celeba = shrink(load_config_file("celeba_hq", "512")).data
    celeba.tfds_data_dir = str(tmp_path / "tfds")
    celeba.download = True
    with pytest.raises(FileNotFoundError, match=r"data512x512.tar does not exist.*manual_dir"):
        sources.get("celeb_a_hq/512").check(celeba)
    assert not (tmp_path / "tfds").exists()


def test_places365_download_fetches_only_the_splits_training_reads(tmp_path):
    """The builder's split generators under `only_splits`: no test archive (4.4 GiB) is fetched
    and no test split prepared."""
    import tensorflow_datasets as tfds

    class Downloads:
        """A TFDS download manager that records what it is asked for."""
        def __init__(self):
            self.urls = []

        def download(self, urls):
            self.urls.extend(urls.values())
            return {k: str(tmp_path / k) for k in urls}

        def download_and_extract(self, url):
            self.urls.append(url)
            return str(tmp_path / "filelist")

        def iter_archive(self, path):
            return iter(())

    places = sources.get("places365_small")
    builder = tfds.builder("places365_small", data_dir=str(tmp_path / "tfds"))
    downloads = Downloads()
    generators = sources.only_splits(builder._split_generators,
                                     places.prepared_splits)(downloads)
    assert [g.name for g in generators] == ["train", "validation"]
    assert sorted(os.path.basename(u) for u in downloads.urls) == [
        "filelist_places365-standard.tar", "train_256_places365standard.tar", "val_256.tar"]
    assert set(places.splits(default_config().data)) == {g.name for g in generators}
