"""pconv_jax.inference.export: a workdir's network as a jax.export artifact that runs without
the project."""

from __future__ import annotations

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pconv_jax import PConvUNet, composite, functional
from pconv_jax.inference import export
from tests.helpers.commands import assert_one_line_error, run_command

SHAPES = [(2, 16, 24), (3, 32, 16)]  # (batch, height, width): sides multiples of 2**2

# Runs with jax and numpy only; the project must not even be imported.
FRESH_PROCESS = """
import sys
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
inputs = np.load(sys.argv[2])
results = {}
for i in range(len(inputs.files) // 2):
    results[f"out{i}"] = np.asarray(exported.call(inputs[f"image{i}"], inputs[f"mask{i}"]))
np.savez(sys.argv[3], **results)
assert not any(name.startswith("pconv_jax") for name in sys.modules), "pconv_jax was imported"
"""


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for n, h, w in SHAPES:
        image = rng.uniform(size=(n, h, w, 3)).astype(np.float32)
        mask = (rng.uniform(size=(n, h, w, 1)) > 0.4).astype(np.float32)
        pairs.append((image, mask))
    return pairs


def _expected(model, image, mask):
    model.eval()
    return np.asarray(jnp.clip(composite(model(image, mask), image, mask), 0.0, 1.0))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny workdir whose BatchNorm statistics moved away from their initial values."""
    from pconv_jax import config as config_lib
    from pconv_jax.inference import convert
    from pconv_jax.training.step import create_model
    config = config_lib.default_config()
    config.model.depth, config.model.base_width, config.model.max_width = 2, 4, 8
    model = create_model(config)
    model.train()
    model(*(jnp.asarray(a) for a in _inputs(seed=5)[1]))
    workdir = tmp_path_factory.mktemp("export") / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    convert.write_checkpoint(config, model, str(workdir))
    return workdir


@pytest.mark.slow
def test_the_command_exports_a_workdir_that_runs_in_a_fresh_process_without_pconv_jax(
        trained_workdir, tmp_path):
    from pconv_jax import config as config_lib
    from pconv_jax.training import checkpoints
    out = tmp_path / "model.jaxexport"
    result = run_command("-m", "pconv_jax.inference.export", "--workdir", str(trained_workdir),
                         "--out", str(out), "--platforms", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"wrote {out} (step 0, ")
    pairs = _inputs()
    np.savez(tmp_path / "inputs.npz", **{f"{kind}{i}": a for i, pair in enumerate(pairs)
                                          for kind, a in zip(("image", "mask"), pair)})
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "outputs.npz")], check=True, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    model, _ = checkpoints.restore_model(config_lib.load_workdir_config(str(trained_workdir)),
                                         str(trained_workdir))
    outputs = np.load(tmp_path / "outputs.npz")
    for i, (image, mask) in enumerate(pairs):
        assert outputs[f"out{i}"].shape == image.shape
        np.testing.assert_allclose(outputs[f"out{i}"], _expected(model, image, mask), atol=1e-5)
        known = mask[..., 0] > 0.5
        np.testing.assert_array_equal(outputs[f"out{i}"][known], image[known])


def test_weights_as_an_argument_take_the_npz_of_functional():
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(3))
    artifact = export.export_inpainter(model, platforms=["cpu"], weights_as_argument=True)
    run = jax.export.deserialize(artifact).call
    image, mask = _inputs()[0]
    for network in (model, PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(4))):
        _, params, state = functional.split(network)
        weights = functional.flatten({"params": params, "state": state})
        np.testing.assert_allclose(run(weights, image, mask), _expected(network, image, mask),
                                   atol=1e-5)


@pytest.mark.slow
def test_the_artifact_is_written_atomically_and_refuses_sides_that_do_not_fit(tmp_path):
    model = PConvUNet(depth=2, widths=(4, 8), rngs=nnx.Rngs(0))
    path = tmp_path / "model.jaxexport"
    export.write(path, export.export_inpainter(model, platforms=["cpu"]))
    assert [p.name for p in tmp_path.iterdir()] == ["model.jaxexport"]  # no temporary left
    run = export.load(path)
    image, mask = _inputs()[1]
    np.testing.assert_allclose(run(image, mask), _expected(model, image, mask), atol=1e-5)
    with pytest.raises(ValueError, match="Division had remainder"):
        run(np.zeros((1, 18, 16, 3), np.float32), np.ones((1, 18, 16, 1), np.float32))


@pytest.mark.slow
def test_bad_input_is_one_error_line(tmp_path):
    module = ("-m", "pconv_jax.inference.export")
    assert_one_line_error(run_command(*module, "--workdir", str(tmp_path)),
                          r"--out required \(see --help\)")
    assert_one_line_error(
        run_command(*module, "--workdir", str(tmp_path), "--out", "m.jaxexport",
                    "--platforms", "cpu,gpu"), r"--platforms: unknown platform\(s\) \['gpu'\]")
    assert_one_line_error(
        run_command(*module, "--workdir", str(tmp_path / "none"), "--out",
                    str(tmp_path / "m.jaxexport")), r"no config.json in workdir .*none")
    assert not (tmp_path / "m.jaxexport").exists()


def test_help_lists_the_flags():
    result = run_command("-m", "pconv_jax.inference.export", "--help")  # absl exits with 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    listed = set(re.findall(r"^  --(?:\[no\])?([\w-]+)", result.stdout, re.MULTILINE))
    assert {"workdir", "out", "config", "checkpoint", "platforms", "weights_out", "debug",
            "verbose"} <= listed, result.stdout
