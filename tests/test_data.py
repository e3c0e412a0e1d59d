"""Tests of the input pipelines: demo, image folder, TFDS (mocked), determinism and resume."""
import logging

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pconv_jax.data import pipeline as data
from pconv_jax.data import sources as data_sources
from test_train_helpers import default_config


def _config(name="demo", size=32, batch=4, **data_overrides):
    config = default_config()
    config.data.name = name
    config.data.image_size = size
    config.data.batch_size = batch
    config.data.num_parallel_calls = 2
    config.data.update(data_overrides)
    return config


def _check_batch(batch, batch_size, size, holes=True):
    assert set(batch) == {"image", "mask"}
    image, mask = batch["image"], batch["mask"]
    assert image.shape == (batch_size, size, size, 3) and image.dtype == np.float32
    assert mask.shape == (batch_size, size, size, 1) and mask.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
    assert set(np.unique(mask)) <= {0.0, 1.0}
    if holes:  # generated masks hold at least 1% holes
        assert ((mask == 0).mean(axis=(1, 2, 3)) > 0.01).all()


def _solid_folder(root, levels):
    """Images of one grey level each (any crop or flip keeps the level: it names the image)."""
    for i, level in enumerate(levels):
        sub = root / f"d{i % 2}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:03d}.png"), np.full((40, 50, 3), level, np.uint8))
    return str(root)


def _levels(batch):
    return {int(round(v * 255)) for v in batch["image"][:, 0, 0, 0]}


def _equal(batches_a, batches_b):
    return all(np.array_equal(a[k], b[k]) for a, b in zip(batches_a, batches_b) for k in a)


def test_demo_pipeline_and_eval_images():
    config = _config("demo", size=48, batch=3)
    batch = next(data.create_train_pipeline(config, seed=0, process_index=0, process_count=1))
    _check_batch(batch, 3, 48)
    evaluation = data.load_eval_images(config, 5)
    assert evaluation.shape == (5, 48, 48, 3) and evaluation.dtype == np.float32
    assert 0.0 <= evaluation.min() and evaluation.max() <= 1.0
    np.testing.assert_array_equal(evaluation, data.load_eval_images(config, 5))
    with pytest.raises(ValueError, match="held-out images"):
        data.load_eval_images(config, 10_000)


def test_demo_images_are_bundled_colour_photographs():
    for split in ("train", "heldout"):
        source = data_sources.demo_source(split)
        for i in range(len(source)):
            image = source.load(i)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert min(image.shape[:2]) >= 256
            assert np.abs(image[..., 0].astype(int) - image[..., 2]).mean() > 1  # not grey
    assert not set(data_sources.DEMO_TRAIN) & set(data_sources.DEMO_HELDOUT)


def test_same_seed_same_batches_and_resume(tmp_path):
    folder = _solid_folder(tmp_path, range(10, 250, 20))  # 12 images
    config = _config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    run = data.create_train_pipeline(config, seed=3, process_index=0, process_count=1)
    first = [next(run) for _ in range(4)]  # 16 examples: crosses the 10-image epoch boundary
    state = run.get_state()
    assert state == {"position": 16}
    rest = [next(run) for _ in range(3)]

    again = data.create_train_pipeline(config, seed=3, process_index=0, process_count=1)
    assert _equal(first + rest, [next(again) for _ in range(7)])
    other = data.create_train_pipeline(config, seed=4, process_index=0, process_count=1)
    assert not _equal(first, [next(other) for _ in range(4)])

    resumed = data.create_train_pipeline(config, seed=3, process_index=0, process_count=1)
    resumed.set_state(state)
    assert _equal(rest, [next(resumed) for _ in range(3)])
    # The first epoch visits each of the 10 training images once; held-out ones never appear.
    levels = [round(v * 255) for b in first for v in b["image"][:, 0, 0, 0]]
    assert len(set(levels[:10])) == 10 and set(levels) == set(levels[:10])


def test_folder_processes_disjoint(tmp_path):
    folder = _solid_folder(tmp_path, range(10, 250, 20))
    config = _config("folder", size=16, batch=4, folder=folder, heldout_count=2)
    seen = []
    for index in range(2):
        pipeline = data.create_train_pipeline(config, seed=0, process_index=index, process_count=2)
        batches = [next(pipeline) for _ in range(5)]
        assert batches[0]["image"].shape[0] == 2  # global batch 4 over 2 processes
        seen.append(set().union(*map(_levels, batches)))
    assert len(seen[0]) == len(seen[1]) == 5
    assert not seen[0] & seen[1]
    heldout = data.load_eval_images(config, 2)
    assert not {int(round(v * 255)) for v in heldout[:, 0, 0, 0]} & (seen[0] | seen[1])


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
    config = _config("folder", size=24, batch=5, folder=str(tmp_path), heldout_count=0)
    pipeline = data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)
    with caplog.at_level(logging.WARNING):
        batches = [next(pipeline) for _ in range(3)]
    for batch in batches:
        _check_batch(batch, 5, 24)
    assert pipeline.skipped_files == 2
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text


def test_nvidia_training_masks_in_pipeline(tmp_path):
    masks_dir = tmp_path / "disocclusion_img_mask"
    masks_dir.mkdir()
    png = np.full((64, 64), 255, np.uint8)
    png[20:40, 10:30] = 0  # black = hole
    cv2.imwrite(str(masks_dir / "0.png"), png)
    config = _config("demo", size=32, batch=2)
    config.masks.source = "nvidia"
    config.masks.nvidia_train_dir = str(tmp_path)
    config.masks.nvidia_dilation_max = 7
    pipeline = data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)
    batches = [next(pipeline) for _ in range(3)]
    for batch in batches:
        _check_batch(batch, 2, 32, holes=False)  # a crop may miss the hole
    assert any((batch["mask"] == 0).any() for batch in batches)


@pytest.mark.parametrize("name", ["places365_small", "celeb_a_hq/256"])
def test_tfds_pipeline_under_mock_data(name, monkeypatch):
    splits = []
    with tfds.testing.mock_data(num_examples=6):
        as_dataset = tfds.core.DatasetBuilder.as_dataset

        def recording_as_dataset(self, split, **kwargs):
            splits.append(split)
            return as_dataset(self, split=split, **kwargs)

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", recording_as_dataset)
        config = _config(name, size=32, batch=4, heldout_count=10)
        for index in range(2):
            pipeline = data.create_train_pipeline(config, seed=0, process_index=index,
                                                  process_count=2)
            batches = [next(pipeline) for _ in range(4)]  # 8 examples: crosses an epoch of 6
            for batch in batches:
                _check_batch(batch, 2, 32)
            resumed = data.create_train_pipeline(config, seed=0, process_index=index,
                                                 process_count=2)
            resumed.set_state({"position": 4})
            assert _equal(batches[2:], [next(resumed) for _ in range(2)])
        evaluation = data.load_eval_images(config, 3)
        assert evaluation.shape == (3, 32, 32, 3) and evaluation.dtype == np.float32

    # The two processes read disjoint parts of the train split (mock data ignores the split).
    total = 100
    infos = tfds.core.SplitDict([tfds.core.SplitInfo(name="train", shard_lengths=[total],
                                                     num_bytes=0)])
    per_process = {split.index: split for split in splits if not isinstance(split, str)}
    assert sorted(per_process) == [0, 1]
    ranges = []
    for index in (0, 1):
        (instruction,) = per_process[index].to_absolute(infos)
        ranges.append(set(range(*slice(instruction.from_, instruction.to).indices(total))))
    assert ranges[0] and ranges[1] and not ranges[0] & ranges[1]
    heldout = set(range(total - 10, total)) if name.startswith("celeb") else set()
    assert not (ranges[0] | ranges[1]) & heldout


def test_celeb_a_hq_without_manual_download(tmp_path):
    config = _config("celeb_a_hq/256", tfds_data_dir=str(tmp_path), manual_dir=str(tmp_path / "m"))
    with pytest.raises(RuntimeError, match="CelebA-HQ cannot be downloaded automatically"):
        data.create_train_pipeline(config, seed=0, process_index=0, process_count=1)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="config.data.name"):
        data.create_train_pipeline(_config("imagenet"), seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="divisible"):
        data.create_train_pipeline(_config(batch=3), seed=0, process_index=0, process_count=2)
    with pytest.raises(FileNotFoundError, match="config.data.folder"):
        data.create_train_pipeline(_config("folder", folder="/nonexistent"), seed=0,
                                   process_index=0, process_count=1)
