"""Running the project's commands in tests: as a subprocess (one `error:` line checked), or a
command's `main` in this process."""

import os
import re
import subprocess
import sys

from absl import flags

from pconv_jax.inference import inpaint
from tests.helpers import REPO


def run_command(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PCONV_JAX_DEBUG")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines()  # TensorFlow's C++ start-up lines aside
            if not re.match(r"(WARNING: All log messages before absl|[IWE]\d{4} )", line)]
    assert len(ours) <= 5, result.stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]


def run_inpaint(args: list[str]) -> None:
    """Runs the inpaint command's `main` in this process, its flags parsed from `args`."""
    if "image" not in flags.FLAGS:
        inpaint.define_flags()
    flags.FLAGS.unparse_flags()  # flags left out take their defaults again
    inpaint.main(flags.FLAGS(["inpaint.py", *args]))
