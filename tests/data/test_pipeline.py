"""Tests of the input pipelines: demo, image folder, TFDS (generated ArrayRecord sets and
mocked), determinism whatever the worker count, resume, disjoint process shares."""
import logging
import threading
import time

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pconv_jax.data import pipeline as data
from pconv_jax.data import sources as data_sources
from pconv_jax.testing.synthetic_tfds import write_synthetic_tfds
from tests.helpers.data import (
    check_batch,
    data_config,
    equal_batches,
    eval_images,
    grey_levels,
    make_pipeline,
    solid_folder,
)


def test_demo_pipeline_and_eval_images():
    config = data_config("demo", size=48, batch=3)
    batch = next(data.create_train_pipeline(config, seed=0, process_index=0, process_count=1))
    check_batch(batch, 3, 48)
    evaluation = eval_images(config, 5)
    assert evaluation.shape == (5, 48, 48, 3) and evaluation.dtype == np.float32
    assert 0.0 <= evaluation.min() and evaluation.max() <= 1.0
    np.testing.assert_array_equal(evaluation, eval_images(config, 5))
    with pytest.raises(ValueError, match="held-out images"):
        eval_images(config, 10_000)


def test_demo_images_are_bundled_colour_photographs():
    for split in ("train", "heldout"):
        source = data_sources.demo_source(split)
        for i in range(len(source)):
            image = source.load(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert min(image.shape[:2]) >= 256
            assert np.abs(image[..., 0].astype(int) - image[..., 2]).mean() > 1  # not grey
    assert not set(data_sources.DEMO_TRAIN) & set(data_sources.DEMO_HELDOUT)


def test_same_batches_whatever_the_worker_count_and_resume(tmp_path):
    folder = solid_folder(tmp_path, range(10, 250, 20))  # 12 images
    config = data_config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    runs = {}
    for workers in (0, 1, 2):
        config.data.workers = workers
        run = make_pipeline(config, seed=3)
        runs[workers] = [next(run) for _ in range(7)]  # crosses the 10-image epoch boundary
        run.close()
    assert equal_batches(runs[0], runs[1]) and equal_batches(runs[0], runs[2])
    deadline = time.time() + 10  # closed pipelines leave no worker thread behind
    while time.time() < deadline and any(t.name.startswith("grain") for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("grain")]
    first, rest = runs[0][:4], runs[0][4:]

    other = make_pipeline(config, seed=4)
    assert not equal_batches(first, [next(other) for _ in range(4)])

    # Resume mid-epoch (position 16 of epochs of 10) with 2 threads, after a started run.
    run = make_pipeline(config, seed=3)
    [next(run) for _ in range(4)]
    state = run.get_state()
    assert state == {"position": 16}
    resumed = make_pipeline(config, seed=3)
    next(resumed)  # its threads are already busy ahead when the state arrives
    resumed.set_state(state)
    assert equal_batches(rest, [next(resumed) for _ in range(3)])
    assert resumed.get_state() == {"position": 28}
    # The first epoch visits each of the 10 training images once; held-out ones never appear.
    levels = [int(v) for b in first for v in b["image"][:, 0, 0, 0]]
    assert len(set(levels[:10])) == 10 and set(levels) == set(levels[:10])


def test_links_list_each_real_file_once_and_cannot_leak_held_out_images(tmp_path):
    import os
    folder = tmp_path / "imgs"
    folder.mkdir()
    solid_folder(folder, range(10, 250, 20))  # 12 images in d0/ and d1/
    plain = data_sources.list_image_files(str(folder))
    split = data_sources.split_folder(plain, heldout_count=2)
    os.symlink(".", folder / "loop")  # a loop: imgs/loop/loop/... is imgs again
    os.symlink("d1", folder / "a_alias")  # sorts before d1: d1's files must keep their names
    os.symlink("d0/000.png", folder / "copy.png")
    (tmp_path / "outside").mkdir()
    cv2.imwrite(str(tmp_path / "outside" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink("../outside", folder / "ext")
    listed = data_sources.list_image_files(str(folder))
    assert listed == sorted(plain + [os.path.join("..", "outside", "x.png")])
    train, heldout = data_sources.split_folder(listed, heldout_count=2)
    assert heldout == split[1]  # the split of the unlinked files is unchanged
    real = {p: os.path.realpath(folder / p) for p in listed}
    assert not {real[p] for p in train} & {real[p] for p in heldout}
    source = data_sources.folder_source(str(folder), "train", heldout_count=2)
    assert len(source) == 11
    assert [source.load(i).shape[:2] for i in range(11)] == [(8, 8)] + [(40, 50)] * 10
    assert source.skipped == 0


def test_workers_setting():
    import os
    cores = len(os.sched_getaffinity(0))
    assert data.resolve_workers(-1) == max(1, cores - 1)
    assert data.resolve_workers(0) == 0 and data.resolve_workers(3) == 3
    with pytest.raises(ValueError, match="config.data.workers"):
        data.resolve_workers(-2)
    with pytest.raises(ValueError, match="config.data.prefetch"):
        make_pipeline(data_config(prefetch=0))


def test_folder_processes_disjoint(tmp_path):
    folder = solid_folder(tmp_path, range(10, 250, 20))
    config = data_config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    seen = []
    for index in range(2):
        pipeline = make_pipeline(config, index=index, count=2)
        batches = [next(pipeline) for _ in range(5)]
        assert batches[0]["image"].shape[0] == 2  # global batch 4 over 2 processes
        seen.append(set().union(*map(grey_levels, batches)))
    assert len(seen[0]) == len(seen[1]) == 5
    assert not seen[0] & seen[1]
    heldout = eval_images(config, 2)
    assert not {round(v * 255) for v in heldout[:, 0, 0, 0]} & (seen[0] | seen[1])


def test_folder_with_odd_files(tmp_path, caplog):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "colour.jpg"), rng.integers(0, 255, (40, 60, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 255, (50, 40), np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), rng.integers(0, 255, (36, 36, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "tiny.webp"), rng.integers(0, 255, (5, 7, 3), np.uint8))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cv2.imwrite(str(tmp_path / "whole.jpg"), rng.integers(0, 255, (80, 90, 3), np.uint8))
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # OpenCV reads it grey
    (tmp_path / "whole.jpg").unlink()
    (tmp_path / "notes.txt").write_text("not an image")
    config = data_config("folder", size=24, batch=5, folder=str(tmp_path), heldout_count=0,
                         workers=3)
    pipeline = make_pipeline(config)
    with caplog.at_level(logging.WARNING):
        batches = [next(pipeline) for _ in range(3)]
        pipeline.close()
    for batch in batches:
        check_batch(batch, 5, 24)
    assert pipeline.skipped_files == 2
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert "2 unreadable image files were skipped" in caplog.text


def test_oversized_folder_images_are_logged_skips(tmp_path, caplog, monkeypatch):
    folder = solid_folder(tmp_path, range(10, 250, 20))  # 12 images of 50x40
    cv2.imwrite(str(tmp_path / "huge.png"), np.full((60, 70, 3), 5, np.uint8))
    cv2.imwrite(str(tmp_path / "d0" / "big2.png"), np.full((60, 70, 3), 5, np.uint8))
    monkeypatch.setenv("PCONV_MAX_PIXELS", "3000")
    config = data_config("folder", size=16, batch=4, folder=folder, heldout_count=4)
    held_out = data_sources.split_folder(data_sources.list_image_files(folder),
                                         heldout_count=4)[1]
    assert held_out.index("huge.png") == 2 and "d0/big2.png" not in held_out
    pipeline = make_pipeline(config)
    with caplog.at_level(logging.WARNING):
        batches = [next(pipeline) for _ in range(3)]  # a whole epoch of 10 training images
        pipeline.close()
        evaluation = eval_images(config, 3)
    assert 5 not in set().union(*map(grey_levels, batches))
    assert pipeline.skipped_files == 1
    assert "big2.png" in caplog.text and "70x60 pixels" in caplog.text
    assert "held-out image" in caplog.text and "huge.png (" in caplog.text
    assert (evaluation != 5 / 255).all()
    monkeypatch.setenv("PCONV_MAX_PIXELS", "-1")
    with pytest.raises(ValueError, match="PCONV_MAX_PIXELS must be a positive number"):
        make_pipeline(config)


def test_nvidia_training_masks_in_pipeline(tmp_path):
    masks_dir = tmp_path / "disocclusion_img_mask"
    masks_dir.mkdir()
    png = np.full((64, 64), 255, np.uint8)
    png[20:40, 10:30] = 0  # black = hole
    cv2.imwrite(str(masks_dir / "0.png"), png)
    config = data_config("demo", size=32, batch=2)
    config.masks.source = "nvidia"
    config.masks.nvidia_train_dir = str(tmp_path)
    config.masks.nvidia_dilation_max = 7
    pipeline = data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)
    batches = [next(pipeline) for _ in range(3)]
    for batch in batches:
        check_batch(batch, 2, 32, holes=False)  # a crop may miss the hole
    assert any((batch["mask"] == 0).any() for batch in batches)


@pytest.mark.parametrize("name", ["places365_small", "celeb_a_hq/256"])
def test_tfds_pipeline_on_generated_array_record_files(name, tmp_path):
    write_synthetic_tfds(name, str(tmp_path), train=20, heldout=4, solid=True)
    config = data_config(name, size=32, batch=4, tfds_data_dir=str(tmp_path), download=False,
                         heldout_count=4)
    seen = []
    for index in range(2):
        pipeline = make_pipeline(config, index=index, count=2)
        batches = [next(pipeline) for _ in range(6)]  # 12 examples: crosses an epoch of 8
        for batch in batches:
            check_batch(batch, 2, 32)
        seen.append({round(level / 10) for batch in batches for level in grey_levels(batch)})
        resumed = make_pipeline(config, index=index, count=2)
        resumed.set_state({"position": 6})
        assert equal_batches(batches[3:], [next(resumed) for _ in range(3)])
    # Disjoint shares of the 16 (CelebA-HQ: 20 - 4 held out) or 20 training examples.
    assert len(seen[0]) == len(seen[1]) == (8 if name.startswith("celeb") else 10)
    assert not seen[0] & seen[1]
    heldout = eval_images(config, 4)
    assert heldout.shape == (4, 32, 32, 3) and heldout.dtype == np.float32
    heldout_ids = {round(v * 255 / 10) for v in heldout[:, 0, 0, 0]}
    assert len(heldout_ids) == 4 and not heldout_ids & (seen[0] | seen[1])


def test_tfrecord_only_copy_names_the_conversion_and_reads_the_same_once_converted(tmp_path):
    native, tfrecord = str(tmp_path / "native"), str(tmp_path / "tfrecord")
    write_synthetic_tfds("places365_small", native, train=12, solid=True)
    write_synthetic_tfds("places365_small", tfrecord, train=12, solid=True,
                         file_format="tfrecord")
    config = data_config("places365_small", tfds_data_dir=tfrecord, download=False)
    with pytest.raises(FileNotFoundError, match=r"(?s)TFRecord files only.*python -m "
                                                r"pconv_jax.data.sources to-array-record "):
        make_pipeline(config)
    version_dir = str(tmp_path / "tfrecord" / "places365_small" / "2.1.0")
    data_sources.main(["sources.py", "to-array-record", version_dir])
    converted = [next(run) for run in [make_pipeline(config)] for _ in range(4)]
    config.data.tfds_data_dir = native
    again = [next(run) for run in [make_pipeline(config)] for _ in range(4)]
    assert equal_batches(converted, again)


def test_tfds_pipeline_under_mock_data():
    with tfds.testing.mock_data(num_examples=6):
        config = data_config("places365_small", size=32, batch=4, download=True)
        check_batch(next(make_pipeline(config)), 4, 32)
        evaluation = eval_images(config, 3)
        assert evaluation.shape == (3, 32, 32, 3) and evaluation.dtype == np.float32


def test_celeb_a_hq_without_manual_download(tmp_path):
    config = data_config("celeb_a_hq/256", tfds_data_dir=str(tmp_path),
                         manual_dir=str(tmp_path / "m"), download=True)
    with pytest.raises(RuntimeError, match="CelebA-HQ cannot be downloaded automatically"):
        make_pipeline(config)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="config.data.name"):
        make_pipeline(data_config("imagenet"))
    with pytest.raises(ValueError, match="divisible"):
        make_pipeline(data_config(batch=3), count=2)
    with pytest.raises(FileNotFoundError, match="config.data.folder"):
        data.create_train_pipeline(data_config("folder", folder="/nonexistent"), seed=0,
                                   process_index=0, process_count=1)


def test_uint8_batches_become_float_model_inputs():
    import jax.numpy as jnp

    from pconv_jax.training.step import model_inputs
    batch = next(make_pipeline(data_config("demo", size=32, batch=2)))
    image, mask = model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    assert image.dtype == mask.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(image), batch["image"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(mask), batch["mask"].astype(np.float32))
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    floats = {"image": jnp.full((1, 4, 4, 3), 0.5), "mask": jnp.ones((1, 4, 4, 1))}
    assert float(model_inputs(floats)[0][0, 0, 0, 0]) == 0.5  # float batches pass unchanged
