"""Every command: a user's mistake prints one `error: ...` line and exits 1, promptly."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest

from pconv_jax import cli
from tests.helpers.commands import assert_one_line_error, run_command
from tests.helpers.training import REPO, tiny_workdir

TINY = ["--config.model.depth=2", "--config.model.base_width=4", "--config.model.max_width=8",
        "--config.data.image_size=16", "--config.data.workers=1"]


def test_misspelt_config_key(tmp_path):
    result = run_command("train.py", "--config", "configs/demo.py",
                         "--config.train.num_stepz=3", "--workdir", str(tmp_path / "w"))
    assert_one_line_error(result, r"unknown config key 'num_stepz' in train\.num_stepz")
    assert not (tmp_path / "w").exists()


def test_missing_config_file_and_bad_config_argument():
    result = run_command("eval.py", "--config", "configs/nosuch.py")
    assert_one_line_error(result, r"--config: config file 'configs/nosuch.py' does not exist")
    result = run_command("train.py", "--config", "configs/places2.py:tune")
    assert_one_line_error(result, r"unknown config argument 'tune'")


def test_batch_size_zero_before_the_workdir_exists(tmp_path):
    result = run_command("train.py", "--config", "configs/demo.py", "--config.data.batch_size=0",
                         "--workdir", str(tmp_path / "w"))
    assert_one_line_error(result, r"config.data.batch_size must be an integer >= 1, got 0")
    assert not (tmp_path / "w").exists()


def test_missing_image(tmp_path):
    result = run_command("inpaint.py", "--image", str(tmp_path / "nope.png"), "--mask",
                         str(tmp_path / "mask.png"), "--out", str(tmp_path / "o.png"),
                         "--method", "telea")
    assert_one_line_error(result, r"nope.png' does not exist")


@pytest.mark.slow
def test_module_commands_keep_their_command_lines(tmp_path):
    out = tmp_path / "masks"
    result = run_command("-m", "pconv_jax.data.masks", "write-test-set", str(out),
                         "--per_cell", "1", "--size", "32", "--seed", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 12
    result = run_command("-m", "pconv_jax.weights.vgg16_files", "convert",
                         str(tmp_path / "nope.pth"), str(tmp_path / "vgg.npz"))
    assert_one_line_error(result, r"VGG16 weights file not found")


@pytest.mark.slow
def test_eval_on_a_mask_folder_with_no_usable_mask(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(12):  # all-valid masks: every file contradicts its hole-ratio bin
        cv2.imwrite(str(masks / f"{i:05d}.png"), np.zeros((16, 16), np.uint8))
    result = run_command("eval.py", "--config", "configs/demo.py", "--config.eval.method=telea",
                         "--workdir", str(tmp_path / "w"), f"--config.eval.test_masks={masks}",
                         *TINY)
    assert_one_line_error(result, rf"no usable masks in {masks} \(12 files left out: ")


@pytest.mark.slow
def test_eval_compare_and_its_mistakes(tmp_path):
    workdir = tmp_path / "w"
    common = ["eval.py", "--config", "configs/demo.py", "--workdir", str(workdir), *TINY,
              "--config.eval.num_images=2", "--config.eval.masks_per_cell=1"]
    result = run_command(*common, "--compare", "patchmatch,ns", "--config.eval.metrics=l1,ssim")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (workdir / "comparison.md").read_text()
    assert "| PatchMatch |" in table and "| OpenCV Navier-Stokes |" in table
    assert "*SSIM*" in table and "PSNR" not in table
    result = run_command(*common, "--config.eval.method=ns", "--compare", "telea")
    assert_one_line_error(result, r"--config.eval.method and --compare exclude each other")
    result = run_command(*common, "--config.eval.method=ns", "--config.eval.metrics=l1,fdi")
    assert_one_line_error(result, r"unknown metric\(s\) \['fdi'\]")


def test_eval_flags_that_became_config_keys_name_the_new_spelling():
    for old, new in [(["--method", "telea"], "--config.eval.method=telea"),
                     (["--metrics=l1,psnr"], "--config.eval.metrics=l1,psnr"),
                     (["--checkpoint", "200"], "--config.eval.checkpoint_step=200")]:
        result = run_command("eval.py", "--config", "configs/demo.py", *old)
        assert_one_line_error(result, rf"--{old[0].lstrip('-').split('=')[0]} is now "
                                      rf"--config\.eval\.\w+: use {re.escape(new)}$")


def test_training_on_unreadable_images_exits_promptly(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(b"not an image")
    result = run_command("train.py", "--config", "configs/folder.py", "--workdir",
                         str(tmp_path / "w"), f"--config.data.folder={images}",
                         "--config.data.heldout_count=1", "--config.data.batch_size=8",
                         *TINY, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.count("error: ") == 1


def test_error_message_and_debug(monkeypatch):
    assert cli.error_message(KeyError("a key")) == "error: a key"
    monkeypatch.setenv("PCONV_JAX_DEBUG", "1")
    assert cli.debug_enabled()
    monkeypatch.setenv("PCONV_JAX_DEBUG", "0")
    assert not cli.debug_enabled()


HELP_FLAGS = {  # a command -> flags its --help must list (its own, and the shared ones)
    ("train.py",): ["--config", "--workdir", "--debug", "--verbose"],
    ("eval.py",): ["--config", "--compare", "--debug", "--verbose"],
    ("inpaint.py",): ["--image", "--mask", "--out", "--workdir", "--debug", "--verbose"],
    ("app.py",): ["--workdir", "--max_side", "--port", "--debug", "--verbose"],
    ("-m", "pconv_jax.inference.convert"): ["--force", "--channel_order", "--verbose"],
    ("-m", "pconv_jax.data.masks"): ["--per_cell", "--size", "--verbose"],
}


def _listed_flags(help_text: str) -> set[str]:
    return set(re.findall(r"^  --(?:\[no\])?([\w-]+)", help_text, re.MULTILINE))


@pytest.mark.slow
def test_help_lists_each_commands_own_flags():
    for command, expected in HELP_FLAGS.items():
        result = run_command(*command, "--help", timeout=120)  # absl's --help exits with 1
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        listed = _listed_flags(result.stdout)
        assert {f.removeprefix("--") for f in expected} <= listed, (command, result.stdout)
        assert not [f for f in listed if "-" in f], (command, listed)  # one style: underscores
        if command == ("eval.py",):  # the settings of config.eval have one spelling
            assert not {"method", "metrics", "checkpoint"} & listed, listed
    script = run_command("inpaint.py", "--help").stdout
    module = run_command("-m", "pconv_jax.inference.inpaint", "--help").stdout
    assert _listed_flags(script) == _listed_flags(module)




@pytest.mark.slow
def test_inpaint_shows_no_library_log_unless_verbose(tmp_path):
    tiny_workdir(tmp_path / "w")
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((48, 64, 3), 90, np.uint8))
    holes = np.zeros((48, 64), np.uint8)
    holes[6:42, 8:56] = 255  # beyond a depth-2 network's reach: our own warning must show
    cv2.imwrite(str(tmp_path / "mask.png"), holes)
    args = ["inpaint.py", "--workdir", str(tmp_path / "w"), "--image", str(tmp_path / "photo.png"),
            "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png")]
    result = run_command(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote {tmp_path / 'out.png'}"
    log = [line for line in result.stderr.splitlines()
           if re.match(r"[IWE]\d{4} |WARNING: All log messages", line) or "libtpu" in line]
    assert not log, result.stderr[-3000:]
    assert "beyond the network's reach" in result.stderr  # the project's warning still shows
    verbose = run_command(*args, "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert re.search(r"^I\d{4} .*(orbax|checkpoint)", verbose.stderr, re.MULTILINE | re.I)


def test_the_library_log_filter_keeps_the_projects_records_and_library_errors():
    import logging

    def passes(path: str, level: int) -> bool:
        record = logging.LogRecord("absl", level, path, 1, "message", None, None)
        return cli._LibraryLogFilter().filter(record)

    lib = "/venv/lib/python3.12/site-packages"
    assert passes(f"{REPO}/pconv_jax/training/logs.py", logging.INFO)
    assert passes(f"{REPO}/train.py", logging.INFO)
    assert passes(f"{lib}/pconv_jax/training/loop.py", logging.INFO)  # installed as a wheel
    assert passes(f"{lib}/clu/metric_writers/logging_writer.py", logging.INFO)  # the metrics
    assert not passes(f"{lib}/jax/_src/xla_bridge.py", logging.INFO)  # "Failed to open libtpu"
    assert passes(f"{lib}/jax/_src/xla_bridge.py", logging.WARNING)
    assert not passes(f"{lib}/orbax/checkpoint/checkpoint_manager.py", logging.WARNING)
    assert passes(f"{lib}/orbax/checkpoint/checkpoint_manager.py", logging.ERROR)


@pytest.mark.slow
def test_bad_settings_and_a_missing_dataset_fail_before_any_workdir(tmp_path):
    """One `error:` line each, and no workdir (nor TFDS folder) left behind."""
    for override, pattern in [
            ("model.dtype=float8", r"config.model.dtype must be one of 'float32', 'bfloat16'"),
            ("train.learning_rate=-0.5", r"config.train.learning_rate must be a number > 0"),
            ("data.name=bogus", r"config.data.name must be one of .*got 'bogus'"),
            ("data.workers=-7", r"config.data.workers must be an integer >= -1, got -7"),
            ("model.base_width=0", r"config.model.base_width must be an integer >= 1, got 0")]:
        result = run_command("train.py", "--config", "configs/demo.py", "--workdir",
                             str(tmp_path / "w"), f"--config.{override}")
        assert_one_line_error(result, pattern)
    result = run_command("train.py", "--config", "configs/places2.py", "--workdir",
                         str(tmp_path / "w"), f"--config.data.tfds_data_dir={tmp_path / 'tfds'}")
    assert_one_line_error(result, r"places365_small is not prepared in .* Three ways forward: "
                                  r"set config.data.download=True")
    assert sorted(os.listdir(tmp_path)) == []
