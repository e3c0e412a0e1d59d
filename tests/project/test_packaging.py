"""The package works when installed as a wheel, not only from the checkout.

Builds the wheel from a copy of the sources, installs it (without dependencies: the test's
environment has them) into a folder of its own, and runs the Quick start's steps from a folder
outside the checkout: train a few steps, evaluate, inpaint, convert a public checkpoint's
fixture. The commands import the installed copy (checked), so a file the wheel lacks, or a path
that climbs out of the package, fails here.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import REPO

FIXTURES = helpers.FIXTURES / "pconv_torch"


def run(args, cwd, env, timeout=600):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, environment) of the wheel installed with `pip install --target`."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pconv_jax", source / "pconv_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", JAX_PLATFORMS="cpu")
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
         str(source)], cwd=tmp, env=env)
    wheels = list((tmp / "dist").glob("pconv_jax-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    run([*pip, "install", "--no-deps", "--target", str(site), str(wheels[0])], cwd=tmp, env=env)
    env["PYTHONPATH"] = str(site)
    return site, env


@pytest.mark.slow
def test_the_installed_wheel_runs_the_quick_start_outside_the_checkout(installed, tmp_path):
    site, env = installed
    user = tmp_path / "user"  # a folder of the user's, outside the checkout
    (user / "configs").mkdir(parents=True)
    # The experiment configs and the two thin scripts are the checkout's; a user copies them.
    # Run from `user`, they import pconv_jax from the installed wheel, not from the checkout.
    shutil.copy(REPO / "configs" / "demo.py", user / "configs" / "demo.py")
    for script in ("train.py", "eval.py"):
        shutil.copy(REPO / script, user / script)
    python = sys.executable

    where = run([python, "-c", "import pconv_jax, pconv_jax.config as c; "
                 "print(pconv_jax.__file__); print(c.default_config().model.depth)"],
                cwd=user, env=env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(site.resolve()), where
    assert where[1] == "7"

    small = ["--config.train.num_steps=2", "--config.train.log_every_steps=1",
             "--config.train.checkpoint_every_steps=2", "--config.train.eval_every_steps=2"]
    run([python, "train.py", "--config", "configs/demo.py", *small], cwd=user, env=env)
    assert (user / "workdirs" / "demo_train" / "checkpoints" / "2").is_dir()

    run([python, "eval.py", "--config", "configs/demo.py", "--config.eval.masks_per_cell=1"],
        cwd=user, env=env)
    assert (user / "workdirs" / "demo_train" / "results.json").is_file()

    run([python, "-c", "import numpy as np, skimage.data as d, PIL.Image as I; "
         "I.fromarray(d.coffee()[:96, :128]).save('photo.png'); "
         "m = np.zeros((96, 128), np.uint8); m[30:50, 40:80] = 255; "
         "I.fromarray(m).save('mask.png')"],
        cwd=user, env=env)
    run([python, "-m", "pconv_jax.inference.inpaint", "--workdir", "workdirs/demo_train",
         "--image", "photo.png", "--mask", "mask.png", "--out", "result.png"], cwd=user, env=env)
    assert (user / "result.png").is_file()

    run([python, "-m", "pconv_jax.inference.convert", "mmagic", str(FIXTURES / "mmagic.pth"),
         "workdirs/converted"], cwd=user, env=env)
    run([python, "-m", "pconv_jax.inference.inpaint", "--workdir", "workdirs/converted",
         "--image", "photo.png", "--mask", "mask.png", "--out", "converted.png"],
        cwd=user, env=env)
    assert (user / "converted.png").is_file()
