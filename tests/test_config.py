"""The config layer: config files and their `:arg`, overrides (one loader for the commands and
Python), saved config.json files, and what importing it costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pconv_jax import config as config_lib
from tests.helpers.training import REPO, demo_config, load_config_file

DEMO = str(REPO / "configs" / "demo.py")


def test_config_args():
    assert load_config_file("places2").experiment == "places2"
    fine = load_config_file("places2", "finetune")
    assert (fine.stage, fine.train.learning_rate, fine.train.freeze_encoder_bn) == (
        "finetune", 5e-5, True)
    assert fine.train.init_from == os.path.join("workdirs", "places2_train")
    train = load_config_file("places2")
    assert (train.train.learning_rate, train.model.depth, train.data.image_size) == (2e-4, 7, 256)
    celeba = load_config_file("celeba_hq", "512,finetune,conv")
    assert (celeba.data.name, celeba.model.depth, celeba.model.partial) == (
        "celeb_a_hq/512", 8, False)
    assert celeba.experiment == "celeba_hq_512_conv"
    assert config_lib.default_workdir(celeba.experiment, celeba.stage) == os.path.join(
        "workdirs", "celeba_hq_512_conv_finetune")
    folder = load_config_file("folder")
    assert (folder.data.image_size, folder.model.depth) == (512, 8)
    demo = load_config_file("demo")
    assert demo.data.image_size <= 128 and demo.model.max_width <= 64
    assert demo.loss.weights.perceptual == 0.0
    with pytest.raises(ValueError, match="unknown config argument '1024'"):
        load_config_file("celeba_hq", "1024")
    with pytest.raises(ValueError, match="unknown config argument 'tune'"):
        load_config_file("places2", "tune")
    cpu = load_config_file("folder", "finetune,cpu")
    assert (cpu.experiment, cpu.stage, cpu.train.init_from) == (
        "folder_cpu", "finetune", os.path.join("workdirs", "folder_cpu_train"))
    with pytest.raises(ValueError, match=r"unknown config argument 'cpu'.*finetune, conv$"):
        load_config_file("places2", "cpu")


CONFIG_FILES = ["demo", "demo:finetune,conv", "places2", "places2:finetune",
                "celeba_hq:512,finetune,conv", "folder:finetune", "folder:cpu,finetune"]


def test_the_config_layer_imports_no_jax_flax_or_tensorflow():
    """Importing `pconv_jax.config` and building every config file (as the commands and
    benchmarks do, overrides included) loads no JAX, Flax, TensorFlow or TFDS."""
    code = textwrap.dedent(f"""
        import sys
        from pconv_jax.config import default_config, load_config
        import pconv_jax.config
        heavy = ("jax", "flax", "tensorflow", "tensorflow_datasets")
        assert not [m for m in sys.modules if m.split(".")[0] in heavy]
        default_config()
        for spec in {CONFIG_FILES!r}:
            name, _, arg = spec.partition(":")
            load_config(f"configs/{{name}}.py" + (f":{{arg}}" if arg else ""),
                        ["train.num_steps=3"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        print("heavy:", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "heavy: []" in out.stdout, out.stdout


def test_experiment_configs_only_override_the_defaults():
    """Every key of every config file is a key of the default config, with the same type."""
    default = config_lib.default_config().to_dict()

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    want = dict(flat(default))
    for spec in CONFIG_FILES:
        name, _, arg = spec.partition(":")
        got = dict(flat(load_config_file(name, arg or None).to_dict()))
        assert got.keys() == want.keys(), spec
        assert all(type(got[k]) is type(want[k]) for k in want), spec


def test_overrides_are_read_as_their_keys_types():
    config = config_lib.load_config(f"{DEMO}:finetune", [
        "train.num_steps=7", "loss.weights.tv=1", "data.folder=123",
        "train.async_checkpoints=false", "eval.metrics=l1,psnr"])
    assert config.stage == "finetune" and config.is_locked
    assert config.train.num_steps == 7 and config.loss.weights.tv == 1.0
    assert config.data.folder == "123"  # a string setting stays a string
    assert config.train.async_checkpoints is False and config.eval.metrics == "l1,psnr"


@pytest.mark.parametrize("override,message", [
    ("train.num_stepz=3", r"unknown config key 'num_stepz' in train\.num_stepz \(did you mean "
                          r"'num_steps'\?\); every key and its default is listed in "
                          r"pconv_jax/configs/default\.py"),
    ("trian.num_steps=3", r"unknown config key 'trian' in trian\.num_steps \(did you mean "
                          r"'train'\?\)"),
    ("model.depth.x=3", r"unknown config key 'x' in model\.depth\.x;"),
])
def test_an_unknown_override_key_names_the_nearest_key(override, message):
    with pytest.raises(KeyError, match=message):
        config_lib.load_config(DEMO, [override])


def test_bad_override_values_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^flag --config\.train\.num_steps=x: invalid literal "
                                         r"for int\(\) with base 10: 'x'$"):
        config_lib.load_config(DEMO, ["train.num_steps=x"])
    with pytest.raises(ValueError, match=r"^flag --config=.*demo\.py:tune: unknown config "
                                         r"argument 'tune' in 'tune'; use a comma-separated "
                                         r"list of: train, finetune, conv$"):
        config_lib.load_config(f"{DEMO}:tune")
    with pytest.raises(OSError, match=r"^--config: config file '.*nosuch\.py' does not exist$"):
        config_lib.load_config(str(tmp_path / "nosuch.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return open('/no/such/file')\n")
    with pytest.raises(OSError, match=r"broken\.py' cannot be loaded: \[Errno 2\] No such file"):
        config_lib.load_config(str(broken))


def test_a_saved_config_json_takes_overrides_too(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(demo_config().to_dict()))
    config = config_lib.load_config(str(path), ["eval.num_images=3"])
    assert config.eval.num_images == 3 and config.model.depth == demo_config().model.depth
    with pytest.raises(KeyError, match="unknown config key 'num_imagez'"):
        config_lib.load_config(str(path), ["eval.num_imagez=3"])
