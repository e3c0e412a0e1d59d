"""train_and_evaluate end to end at tiny sizes: every config, the two stages, the NaN guard,
config and workdir errors."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from pconv_jax import config as config_lib
from pconv_jax.data import sources
from pconv_jax.loss import losses
from pconv_jax.training import checkpoints, logs
from pconv_jax.training.loop import train_and_evaluate
from tests.helpers.data import wrap_train_pipeline
from tests.helpers.training import demo_config, load_config_file, param_leaves, shrink


def _scalars(workdir: str, tag: str) -> dict[int, float]:
    values = {}
    for path in tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_demo_loss_decreases_then_finetune_freezes_encoder_bn(tmp_path, compiled_steps):
    config = demo_config(steps=40)
    config.train.log_every_steps = 5
    config.train.checkpoint_every_steps = 20
    train_dir = str(tmp_path / "train")
    state = train_and_evaluate(config, train_dir, steps=compiled_steps(config))
    assert int(state.step) == 40
    losses = _scalars(train_dir, "loss")
    assert sorted(losses) == list(range(5, 41, 5))
    assert losses[40] < 0.7 * losses[5], losses
    assert set(_scalars(train_dir, "eval_psnr")) == {40}
    assert os.path.isfile(os.path.join(train_dir, "config.json"))

    # Fine-tune from the train stage: encoder BN frozen (statistics and scale/bias).
    fine = demo_config("finetune", steps=2)
    fine.train.init_from = train_dir
    fine_state = train_and_evaluate(fine, str(tmp_path / "finetune"), steps=compiled_steps(fine))
    assert fine.train.learning_rate == 5e-4 and fine.train.freeze_encoder_bn
    before_p, after_p = param_leaves(state.params), param_leaves(fine_state.params)
    before_s, after_s = param_leaves(state.batch_stats), param_leaves(fine_state.batch_stats)
    encoder_bn = [k for k in before_p if k.startswith("encoder/") and "/bn/" in k]
    decoder_bn = [k for k in before_p if k.startswith("decoder/") and "/bn/" in k]
    assert encoder_bn and decoder_bn
    for key in encoder_bn:
        np.testing.assert_array_equal(after_p[key], before_p[key], err_msg=key)
    for key in [k for k in before_s if k.startswith("encoder/")]:
        np.testing.assert_array_equal(after_s[key], before_s[key], err_msg=key)
    for key in decoder_bn + [k for k in before_s if k.startswith("decoder/")]:
        before = before_p.get(key, before_s.get(key))
        after = after_p.get(key, after_s.get(key))
        assert not np.array_equal(after, before), key
    for key in [k for k in before_p if k.endswith("kernel")]:
        assert not np.array_equal(after_p[key], before_p[key]), key


def _mock_tfds_config(name: str, arg: str | None) -> ml_collections.ConfigDict:
    config = shrink(load_config_file(name, arg), steps=2)
    config.data.heldout_count = 2
    config.train.checkpoint_every_steps = 2
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", [("places2", None), ("celeba_hq", "512,conv")])
def test_tfds_configs_train_under_mock_data(name, arg, tmp_path, compiled_steps, monkeypatch):
    config = _mock_tfds_config(name, arg)
    config.data.download = True  # mock_data stands in for the download
    monkeypatch.setattr(sources.TfdsSource, "check", lambda self, data: None)  # none to check
    with tfds.testing.mock_data(num_examples=16):
        state = train_and_evaluate(config, str(tmp_path), steps=compiled_steps(config))
    assert int(state.step) == 2
    assert checkpoints.Checkpointer(str(tmp_path / "checkpoints"), save_every_steps=2, keep=1,
                                    read_only=True).latest_step() == 2


@pytest.mark.slow
def test_a_varying_learning_rate_is_logged_at_every_log_step(tmp_path, compiled_steps):
    """Warmup then cosine, with accumulation over 2 micro-batches: the logged learning rate is
    the schedule's value of each step's update."""
    from pconv_jax.training.step import learning_rate_schedule
    config = demo_config(steps=4, batch=16)
    config.train.update(lr_schedule="cosine", warmup_steps=2, accumulation_steps=2,
                        log_every_steps=1)
    state = train_and_evaluate(config, str(tmp_path), steps=compiled_steps(config))
    assert int(state.step) == 4
    logged = _scalars(str(tmp_path), "learning_rate")
    want = learning_rate_schedule(config.train)
    assert sorted(logged) == [1, 2, 3, 4]
    np.testing.assert_allclose([logged[s] for s in range(1, 5)],
                               [float(want(s - 1)) for s in range(1, 5)], rtol=1e-6)
    assert logged[1] == 0.0 and logged[3] == pytest.approx(config.train.learning_rate)
    assert config.train.learning_rate > logged[4] > 0


@pytest.mark.slow
def test_folder_config_trains(tmp_path, compiled_steps):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(folder / f"{i}.png")
    config = shrink(load_config_file("folder", "conv"), steps=2)
    config.data.folder = str(folder)
    config.data.heldout_count = 2
    state = train_and_evaluate(config, str(tmp_path / "work"), steps=compiled_steps(config))
    assert int(state.step) == 2


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, compiled_steps):
    def poisoned(count, batch):
        """Real batches, but NaN images from the 7th batch on."""
        batch = dict(batch)
        if count >= 7:
            batch["image"] = np.full(batch["image"].shape, np.nan, np.float32)
        return batch

    wrap_train_pipeline(monkeypatch, poisoned)
    config = demo_config(steps=12)
    config.train.log_every_steps = 5
    config.train.checkpoint_every_steps = 4
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(in steps 6\.\.8\).*"
                                                 r"last good checkpoint is step 4"):
        train_and_evaluate(config, str(tmp_path), steps=compiled_steps(config))
    model, step = checkpoints.restore_model(config, str(tmp_path))
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(model))


@pytest.mark.parametrize("key,value,message", [
    ("data.batch_size", 0, r"config.data.batch_size must be an integer >= 1, got 0"),
    ("data.batch_size", -4, r"config.data.batch_size must be an integer >= 1, got -4"),
    ("data.batch_size", 12, r"batch_size = 12 \(global\) must be a multiple of the device count 8"),
    ("train.log_every_steps", 0, r"config.train.log_every_steps must be an integer >= 1"),
    ("train.eval_every_steps", 0, r"config.train.eval_every_steps must be"),
    ("train.checkpoint_every_steps", 0, r"config.train.checkpoint_every_steps must be"),
    ("train.keep_checkpoints", 0, r"config.train.keep_checkpoints must be an integer >= 1"),
    ("data.image_size", 60, r"data.image_size = 60 must be a multiple of 2\*\*model.depth = 8"),
    ("eval.image_size", 36, r"config.eval.image_size = 36 must be a multiple of 2\*\*model.depth"),
    ("model.dtype", "float8", r"config.model.dtype must be one of 'float32', 'bfloat16', got "
                              r"'float8'"),
    ("train.learning_rate", -0.5, r"config.train.learning_rate must be a number > 0, got -0.5"),
    ("train.learning_rate", 0.0, r"config.train.learning_rate must be a number > 0, got 0.0"),
    ("data.name", "bogus", r"config.data.name must be one of 'demo', 'folder', "
                           r"'places365_small', .*got 'bogus'"),
    ("masks.border", "bogus", r"config.masks.border must be one of 'any', 'avoid', 'touch'"),
    ("masks.source", "bogus", r"config.masks.source must be one of 'generated', 'nvidia'"),
    ("masks.source", "nvidia", r"'nvidia' needs config.masks.nvidia_train_dir"),
    ("masks.hole_ratio_min", 0.5, r"hole_ratio_min \(0.5\) must be below .*hole_ratio_max"),
    ("masks.hole_ratio_max", 1.5, r"config.masks.hole_ratio_max must be a number in \(0, 1\]"),
    ("masks.nvidia_dilation_max", 2, r"nvidia_dilation_min \(5\) must not exceed"),
    ("data.prefetch", 0, r"config.data.prefetch must be an integer >= 1, got 0"),
    ("data.workers", -7, r"config.data.workers must be an integer >= -1, got -7"),
    ("data.worker_processes", -2, r"config.data.worker_processes must be an integer >= -1"),
    ("data.resize_mode", "zoom", r"config.data.resize_mode must be one of 'crop', 'resize'"),
    ("data.heldout_fraction", 1.0, r"config.data.heldout_fraction must be a number in \[0, 1\)"),
    ("model.input_norm", "bogus", r"config.model.input_norm must be one of 'none', 'imagenet'"),
    ("model.base_width", 0, r"config.model.base_width must be an integer >= 1, got 0"),
    ("model.max_width", 0, r"config.model.max_width must be an integer >= 1, got 0"),
    ("model.bn_momentum", 1.0, r"config.model.bn_momentum must be a number in \[0, 1\)"),
    ("train.adam_b2", 1.0, r"config.train.adam_b2 must be a number in \[0, 1\)"),
    ("seed", -1, r"config.seed must be an integer >= 0, got -1"),
    ("stage", "warmup", r"config.stage must be one of 'train', 'finetune'"),
    ("loss.vgg_weights", None, r"config.loss.vgg_weights must be a string, got None"),
])
def test_bad_settings_are_refused_before_the_workdir_exists(tmp_path, key, value, message):
    config = demo_config()
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    workdir = tmp_path / "work"
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_keep_checkpoints_zero_leaves_existing_checkpoints_alone(tmp_path):
    saved = tmp_path / "checkpoints" / "2"
    saved.mkdir(parents=True)
    (saved / "marker").write_text("")
    config = demo_config()
    config.train.keep_checkpoints = 0
    with pytest.raises(ValueError, match="keep_checkpoints must be an integer >= 1, got 0"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["2", "checkpoints", "marker"]


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
    config = shrink(load_config_file("places2"))
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    config.data.download = False
    with pytest.raises(FileNotFoundError, match="places365_small.*not prepared.*download"):
        train_and_evaluate(config, str(tmp_path / "work"))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write to the workdir.*--workdir"):
        train_and_evaluate(demo_config(), str(blocker / "work"))


def test_image_grid_layout():
    image = np.full((2, 4, 4, 3), 0.5, np.float32)
    mask = np.ones((2, 4, 4, 1), np.float32)
    mask[:, :2] = 0.0
    output = np.zeros_like(image)
    grid = logs.image_grid(image, mask, output, 0.25 * np.ones_like(image))
    assert grid.shape == (2 * 4 + 2, 4 * 4 + 3 * 2, 3) and grid.dtype == np.uint8
    assert (grid[0, 0] == 255).all() and (grid[3, 0] == 128).all()  # holes white, known pixels
    assert (grid[0, 6] == 0).all() and (grid[0, 12] == 64).all() and (grid[0, 18] == 128).all()
    assert (grid[4:6] == 255).all()  # the gap between rows


# ----------------------------------------------------------------------------- first runs

def test_setting_choices_agree_with_the_modules_that_read_them():
    from pconv_jax.data import masks
    from pconv_jax.loss import losses as loss_lib
    from pconv_jax.network import unet
    choices = config_lib.CHOICES
    assert set(choices["model.input_norm"]) == set(unet.INPUT_NORMS)
    assert set(choices["masks.border"]) == set(masks._BORDERS)
    assert set(config_lib.default_config().loss.weights) == set(loss_lib.TERMS)


def test_offline_download_fails_at_once_with_one_line(tmp_path, monkeypatch):
    import socket

    def offline(address, timeout):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", offline)
    config = shrink(load_config_file("places2"))
    config.data.tfds_data_dir = str(tmp_path / "tfds")
    config.data.download = True
    with pytest.raises(OSError, match=r"download host data.csail.mit.edu cannot be reached "
                                      r"\(.*name resolution\): connect to the internet, or point"):
        train_and_evaluate(config, str(tmp_path / "work"))
    assert sorted(os.listdir(tmp_path)) == []


def test_a_start_that_fails_in_a_new_workdir_leaves_no_folder(tmp_path):
    """Too few held-out images for the held-out batch: the error names the setting, and the
    workdir the run had created is gone."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    config = demo_config()
    config.data.name, config.data.folder, config.data.heldout_count = "folder", str(folder), 1
    workdir = tmp_path / "runs" / "work"
    with pytest.raises(ValueError, match=r"holds only 1 held-out images .* 2 were asked for; "
                                         r"lower config.train.eval_batch_size or hold out more "
                                         r"images \(config.data.heldout_count"):
        train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(tmp_path)) == ["images"]


@pytest.mark.slow
def test_a_refused_or_failed_resume_leaves_config_json_unchanged(tmp_path, compiled_steps,
                                                                  caplog):
    config = demo_config(steps=2)
    train_and_evaluate(config, str(tmp_path), steps=compiled_steps(config))
    saved = (tmp_path / "config.json").read_text()
    files = sorted(os.listdir(tmp_path))

    reseeded = demo_config(steps=4)
    reseeded.seed = 3
    with pytest.raises(ValueError, match=r"at step 2 trained with other settings: seed: 0 -> 3"):
        train_and_evaluate(reseeded, str(tmp_path), steps=compiled_steps(reseeded))
    failing = demo_config(steps=4)
    failing.train.eval_batch_size = 1000  # fails after the restore, on the held-out batch
    with pytest.raises(ValueError, match="lower config.train.eval_batch_size"):
        train_and_evaluate(failing, str(tmp_path), steps=compiled_steps(failing))
    assert (tmp_path / "config.json").read_text() == saved
    assert sorted(os.listdir(tmp_path)) == files

    with caplog.at_level(logging.WARNING):
        state = train_and_evaluate(reseeded, str(tmp_path), steps=compiled_steps(reseeded),
                                   allow_config_change=True)
    assert int(state.step) == 4
    assert (tmp_path / "config.2.json").read_text() == saved
    assert "resuming at step 2 with changed settings: seed: 0 -> 3" in caplog.text


@pytest.mark.slow
def test_folder_cpu_recipe_trains_on_a_few_photos(tmp_path, compiled_steps):
    config = load_config_file("folder", "cpu")
    assert (config.data.image_size, config.model.depth, config.data.worker_processes) == (
        64, 4, 0)
    assert losses.vgg_for_config(config.loss) is None  # no VGG16 file needed
    assert config.experiment == "folder_cpu" and config.train.num_steps <= 1000
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # photos of a few sizes, scaled down whole
        shape = (90 + 10 * i, 120, 3) if i % 2 else (160, 100 + 7 * i, 3)
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(folder / f"{i}.jpg")
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.folder = str(folder)
    config.train.num_steps = 2
    config.train.async_checkpoints = False
    state = train_and_evaluate(config, str(tmp_path / "work"), steps=compiled_steps(config))
    assert int(state.step) == 2
    assert set(_scalars(str(tmp_path / "work"), "eval_psnr")) == {2}


@pytest.mark.slow
def test_extra_loss_terms_train_through_the_loop_and_are_logged(tmp_path):
    """`make_steps(..., extra_terms=...)` in `train_and_evaluate`: each extra term is logged
    next to the paper's; one reads VGG16 features of a named file whose paper terms are off."""
    import jax.numpy as jnp

    from pconv_jax.network.vgg16 import random_vgg16
    from pconv_jax.training.step import make_steps, network_graphdef
    from pconv_jax.weights import vgg16_files

    config = demo_config(steps=2)
    vgg16_files.save_npz(random_vgg16(jax.random.key(0)), tmp_path / "vgg.npz")
    config.loss.vgg_weights = str(tmp_path / "vgg.npz")
    extra = {"l2": (0.5, lambda x: jnp.mean((x.output - x.target) ** 2)),
             "pool1": (0.1, lambda x: jnp.mean(jnp.abs(x.features.output[0]
                                                       - x.features.target[0])))}
    steps = make_steps(config, network_graphdef(config), extra_terms=extra)
    workdir = str(tmp_path / "work")
    assert int(train_and_evaluate(config, workdir, steps=steps).step) == 2
    for tag in ("loss_l2", "loss_pool1", "loss_hole", "loss"):
        logged = _scalars(workdir, tag)
        assert set(logged) == {2} and logged[2] > 0, tag
