"""Converting naoto0804's and mmagic's PyTorch PConv checkpoints (no torch needed).

The fixtures in tests/fixtures/pconv_torch/ were written by tests/fixtures/make_torch_checkpoints.py
with torch modules that reproduce each upstream computation; they hold the checkpoints, inputs,
and upstream's raw outputs (in upstream's space and channel order) and composites.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys

import cv2
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from pconv_jax.inference import convert as convert_cmd
from pconv_jax.network.unet import PConvUNet
from pconv_jax.weights import pconv_checkpoints, torch_pickle
from tests import helpers
from tests.helpers import REPO
from tests.helpers.commands import run_inpaint

FIXTURES = helpers.FIXTURES / "pconv_torch"
SOURCES = ("naoto0804", "mmagic")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _reference(source: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{source}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _to_upstream_space(source: str, output: np.ndarray) -> np.ndarray:
    """Our [0, 1] RGB output in the space upstream's network computes in (their opt.py /
    mmediting's Normalize(127.5, 127.5) on BGR images)."""
    if source == "naoto0804":
        return (output - IMAGENET_MEAN) / IMAGENET_STD
    return ((output * 255.0 - 127.5) / 127.5)[..., ::-1]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Each fixture converted once into a workdir."""
    root = tmp_path_factory.mktemp("converted")
    return {s: convert_cmd.convert_to_workdir(s, str(FIXTURES / f"{s}.pth"), str(root / s))
            for s in SOURCES}


# ----------------------------------------------------------------------------- input_norm

@pytest.mark.parametrize("norm,mean,std", [("symmetric", 0.5, 0.5),
                                           ("imagenet", IMAGENET_MEAN, IMAGENET_STD)])
@pytest.mark.slow
def test_input_norm_is_normalise_in_denormalise_out(norm, mean, std):
    rng = np.random.default_rng(0)
    image = rng.random((2, 16, 16, 3), np.float32)
    mask = (rng.random((2, 16, 16, 1)) > 0.3).astype(np.float32)
    plain = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    normed = PConvUNet(depth=2, widths=(4, 8), input_norm=norm, rngs=nnx.Rngs(0))
    plain.eval(), normed.eval()
    expected = np.asarray(plain(jnp.asarray((image - mean) / std, jnp.float32), mask)) * std + mean
    np.testing.assert_allclose(np.asarray(normed(image, mask)), expected, rtol=1e-5, atol=1e-5)


def test_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm must be one of"):
        PConvUNet(depth=2, widths=(4, 8), input_norm="caffe", rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- parity

@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_raw_output_matches_upstream(source):
    config, model = pconv_checkpoints.load_pconv_checkpoint(source, FIXTURES / f"{source}.pth")
    assert (config.depth, config.base_width, config.max_width) == (5, 4, 32)
    assert config.input_norm == {"naoto0804": "imagenet", "mmagic": "symmetric"}[source]
    ref = _reference(source)
    ours = _to_upstream_space(source, np.asarray(model(ref["image"], ref["mask"]), np.float64))
    scale = np.abs(ref["raw_output"]).max()
    np.testing.assert_allclose(ours, ref["raw_output"], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_inpaint_command_writes_upstreams_composite(source, workdirs, tmp_path):
    ref = _reference(source)
    for i in range(len(ref["image"])):
        pixels = np.round(ref["image"][i] * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        holes = np.where(ref["mask"][i, ..., 0] > 0.5, 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "mask.png"), holes)  # white = hole
        run_inpaint(["--workdir", workdirs[source], "--image", str(tmp_path / "photo.png"),
                     "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png")])
        written = cv2.cvtColor(cv2.imread(str(tmp_path / "out.png")), cv2.COLOR_BGR2RGB)
        error = np.abs(written / 255.0 - ref["composite"][i])
        assert error.max() <= 1 / 255 + 1e-6, (i, error.max())
        assert (holes > 0).any()


def test_workdir_holds_config_and_provenance(workdirs):
    for source, workdir in workdirs.items():
        config = json.loads(pathlib.Path(workdir, "config.json").read_text())
        assert config["model"]["input_norm"] == {"naoto0804": "imagenet",
                                                 "mmagic": "symmetric"}[source]
        conversion = json.loads(pathlib.Path(workdir, "conversion.json").read_text())
        assert conversion["source"] == source and len(conversion["sha256"]) == 64
        assert conversion["upstream_step"] == {"naoto0804": 1000, "mmagic": 500000}[source]
        assert os.listdir(pathlib.Path(workdir, "checkpoints")) == ["0"]


# ----------------------------------------------------------------------------- bad input

def _naoto_state() -> dict:
    return torch_pickle.read_torch_file(FIXTURES / "naoto0804.pth")


def test_missing_unexpected_and_misshaped_weights_are_listed(monkeypatch):
    obj = _naoto_state()
    state = obj["model"]
    del state["dec_2.bn.running_var"]
    state["dec_3.conv.input_conv.bias"] = np.zeros(8, np.float32)
    state["enc_3.conv.input_conv.weight"] = np.zeros((16, 8, 3, 3), np.float32)
    monkeypatch.setattr(torch_pickle, "read_torch_file", lambda path: obj)
    with pytest.raises(pconv_checkpoints.CheckpointMismatchError) as info:
        pconv_checkpoints.convert("naoto0804", "fake.pth")
    message = str(info.value)
    assert "3 weights differ" in message
    assert "missing: dec_2.bn.running_var (4,)" in message
    assert "unexpected: dec_3.conv.input_conv.bias (8,)" in message
    assert "mis-shaped: enc_3.conv.input_conv.weight (16, 8, 3, 3), expected (16, 8, 5, 5)" \
        in message


def test_mask_kernel_that_is_not_ones_is_refused(monkeypatch):
    obj = _naoto_state()
    obj["model"]["enc_2.conv.mask_conv.weight"] = obj["model"]["enc_2.conv.mask_conv.weight"] * 2
    monkeypatch.setattr(torch_pickle, "read_torch_file", lambda path: obj)
    with pytest.raises(pconv_checkpoints.CheckpointMismatchError, match="not all ones"):
        pconv_checkpoints.convert("naoto0804", "fake.pth")


def test_non_finite_weights_are_refused_naming_the_key(monkeypatch, tmp_path):
    obj = _naoto_state()
    obj["model"]["dec_2.bn.running_var"][1] = np.nan
    monkeypatch.setattr(torch_pickle, "read_torch_file", lambda path: obj)
    with pytest.raises(ValueError, match=r"fake.pth: weight 'dec_2.bn.running_var' holds 1 "
                                         r"non-finite value\(s\) \(NaN or inf\) out of 4"):
        pconv_checkpoints.convert("naoto0804", "fake.pth")
    (tmp_path / "fake.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="'dec_2.bn.running_var' holds 1 non-finite"):
        convert_cmd.convert_to_workdir("naoto0804", str(tmp_path / "fake.pth"),
                                       str(tmp_path / "w"))
    assert os.listdir(tmp_path) == ["fake.pth"]  # no workdir, no staging folder


def test_a_missing_file_says_where_each_public_file_comes_from(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        convert_cmd.convert_to_workdir("mmagic", str(tmp_path / "pconv.pth"), str(tmp_path / "w"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"checkpoint file "
                                                      f"'{tmp_path / 'pconv.pth'}' does not exist")
    for source, name, _, url in pconv_checkpoints.PUBLIC_FILES:
        assert f"{name} ({source}, " in message and url in message
    assert message.index("(mmagic, ") < message.index("(naoto0804, ")  # the asked source first
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_of_the_other_source_is_refused():
    with pytest.raises(pconv_checkpoints.CheckpointMismatchError,
                       match="not a mmagic PConvUNet checkpoint.*naoto0804"):
        pconv_checkpoints.convert("mmagic", FIXTURES / "naoto0804.pth")
    with pytest.raises(pconv_checkpoints.CheckpointMismatchError,
                       match="not a naoto0804 PConvUNet checkpoint"):
        pconv_checkpoints.convert("naoto0804", FIXTURES / "mmagic.pth")


@pytest.mark.parametrize("name", ["naoto0804.pth", "mmagic.pth"])  # legacy stream, zip
def test_truncated_file_is_a_one_line_error(name, tmp_path):
    data = (FIXTURES / name).read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 50):
        path = tmp_path / name
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError) as info:
            pconv_checkpoints.convert(name.split(".")[0], path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        pconv_checkpoints.convert("mmagic", path)
    with pytest.raises(FileNotFoundError):
        pconv_checkpoints.convert("mmagic", tmp_path / "absent.pth")


def test_mmcv_meta_is_plain_data_and_mmengine_logs_are_refused():
    converted = pconv_checkpoints.convert("mmagic", FIXTURES / "mmagic.pth")
    assert converted.upstream_step == 500000 and converted.channel_order == "bgr"
    with pytest.raises(pickle.UnpicklingError) as info:
        pconv_checkpoints.convert("mmagic", FIXTURES / "mmagic_mmengine.pth")
    message = str(info.value)
    assert "mmengine.logging.history_buffer.HistoryBuffer" in message
    assert "message_hub" in message and "\n" not in message


def test_channel_order_override_changes_the_image_channels_only():
    _, bgr = pconv_checkpoints.load_pconv_checkpoint("mmagic", FIXTURES / "mmagic.pth")
    _, rgb = pconv_checkpoints.load_pconv_checkpoint("mmagic", FIXTURES / "mmagic.pth",
                                                     channel_order="rgb")
    np.testing.assert_array_equal(bgr.encoder[0].conv.kernel[...],
                                  rgb.encoder[0].conv.kernel[...][:, :, ::-1])
    np.testing.assert_array_equal(bgr.encoder[1].conv.kernel[...],
                                  rgb.encoder[1].conv.kernel[...])
    np.testing.assert_array_equal(bgr.decoder[-1].conv.bias[...],
                                  rgb.decoder[-1].conv.bias[...][::-1])


# ----------------------------------------------------------------------------- the workdir

def test_refuses_to_overwrite_and_never_leaves_a_half_finished_workdir(tmp_path, monkeypatch):
    source = str(FIXTURES / "naoto0804.pth")
    workdir = tmp_path / "w"
    convert_cmd.convert_to_workdir("naoto0804", source, str(workdir))
    (workdir / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="already holds a checkpoint; pass --force"):
        convert_cmd.convert_to_workdir("naoto0804", source, str(workdir))
    assert (workdir / "marker").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("disk pulled out")
    monkeypatch.setattr(convert_cmd, "write_checkpoint", crash)
    with pytest.raises(RuntimeError):
        convert_cmd.convert_to_workdir("naoto0804", source, str(workdir), force=True)
    with pytest.raises(RuntimeError):
        convert_cmd.convert_to_workdir("naoto0804", source, str(tmp_path / "fresh"))
    assert sorted(os.listdir(tmp_path)) == ["w"]  # no staging directory, no half workdir
    assert (workdir / "marker").exists() and (workdir / "checkpoints" / "0").is_dir()
    monkeypatch.undo()

    convert_cmd.convert_to_workdir("mmagic", str(FIXTURES / "mmagic.pth"), str(workdir),
                                   force=True)
    assert not (workdir / "marker").exists()
    assert json.loads((workdir / "conversion.json").read_text())["source"] == "mmagic"
    assert sorted(os.listdir(tmp_path)) == ["w"]

    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a pconv_jax workdir"):
        convert_cmd.convert_to_workdir("mmagic", str(FIXTURES / "mmagic.pth"), str(other),
                                       force=True)
    started = tmp_path / "started"  # a training run that never saved a checkpoint
    started.mkdir()
    (started / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists as a workdir; pass --force"):
        convert_cmd.convert_to_workdir("mmagic", str(FIXTURES / "mmagic.pth"), str(started))
    assert (started / "config.json").read_text() == "{}"


@pytest.mark.slow
def test_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "pconv_jax.inference.convert"]
    workdir = str(tmp_path / "w")
    done = subprocess.run(command + ["naoto0804", str(FIXTURES / "naoto0804.pth"), workdir],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {workdir}" in done.stdout
    again = subprocess.run(command + ["naoto0804", str(FIXTURES / "naoto0804.pth"), workdir],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert again.returncode == 1 and "--force" in again.stderr
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes((FIXTURES / "mmagic.pth").read_bytes()[:5000])
    bad = subprocess.run(command + ["mmagic", str(truncated), str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read"), bad.stderr


# ----------------------------------------------------------------------------- downstream

def _demo_like(workdir: str, arg: str = "train") -> ml_collections.ConfigDict:
    """configs/demo.py at 64x64 with the converted network's settings (as --config.model.*)."""
    from tests.helpers.training import demo_config
    config = demo_config(arg, steps=2, size=64, batch=8)
    saved = json.loads(pathlib.Path(workdir, "config.json").read_text())["model"]
    config.model.update({k: saved[k] for k in ("depth", "base_width", "max_width",
                                               "input_norm")})
    return config


@pytest.mark.slow
def test_eval_runs_on_a_converted_workdir(workdirs):
    from pconv_jax.inference import evaluate
    config = _demo_like(workdirs["mmagic"])
    config.eval.update(masks_per_cell=1, num_images=2, batch_size=4)
    results = evaluate.run(config, workdirs["mmagic"], progress=False)
    assert results["step"] == 0 and results["num_masks"] == 12
    assert all(np.isfinite(results["table"]["all"][m]) for m in ("l1", "psnr", "ssim"))


@pytest.mark.slow
def test_finetuning_starts_from_a_converted_workdir(workdirs, tmp_path):
    from pconv_jax.training import loop
    config = _demo_like(workdirs["naoto0804"], "finetune")
    config.train.init_from = workdirs["naoto0804"]
    state = loop.train_and_evaluate(config, str(tmp_path / "finetune"))
    assert int(state.step) == 2
    _, converted = pconv_checkpoints.load_pconv_checkpoint("naoto0804",
                                                           FIXTURES / "naoto0804.pth")
    # The fine-tuning stage freezes the encoder's BatchNorm: still the converted statistics.
    np.testing.assert_array_equal(np.asarray(state.batch_stats["encoder"][1]["bn"]["mean"][...]),
                                  np.asarray(converted.encoder[1].bn.mean[...]))
