"""benchmarks/gpu_suite.sh --dry-run: the GPU day's sequence on CPU at tiny sizes, so that the
script cannot rot before a GPU runs it."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

TRAIN_ROWS = ("train step, float32, loss float32", "train step, float32, loss float32, remat",
              "train step, bfloat16, loss float32", "train step, bfloat16, loss bfloat16",
              "train step, bfloat16, loss bfloat16, remat")
OTHER_ROWS = ("data wait, batch 2", "data wait, batch 4",
              "projection, 8 GPUs, 400 Gb/s NIC per GPU",
              "projection, 64 GPUs, 400 Gb/s NIC per GPU",
              "projection, 512 GPUs, 400 Gb/s NIC per GPU")


@pytest.mark.slow
def test_gpu_suite_dry_run_prints_every_row(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(PYTHONPATH=str(REPO), PYTHON=sys.executable)
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--dry-run", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "summary.md").read_text()
    assert table in result.stdout  # printed at the end, and kept
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == [*TRAIN_ROWS, *OTHER_ROWS]
    for label, line in rows.items():
        assert "missing" not in line, line
        images_per_s = line.split(" | ")[1]
        assert re.fullmatch(r"[\d,.]+(–[\d,.]+)?", images_per_s), line
    for label in TRAIN_ROWS:
        assert "n/a (device)" in rows[label]  # the CPU reports no peak memory
    for label in OTHER_ROWS[:2]:
        assert re.search(r"data wait \d+\.\d %", rows[label]), rows[label]
    for label in OTHER_ROWS[2:]:
        low, high = map(int, re.search(r"efficiency (\d+)–(\d+) %", rows[label]).groups())
        assert 0 < low <= high <= 100, rows[label]
        assert "(CPU analysis, not GPU)" in rows[label] and "measured" in rows[label]

    # The projection's communication, read from the compiled program (--quick: depth 4, so 3
    # encoder + 3 decoder BatchNorm layers): the gradient all-reduces carry the parameters'
    # float32 bytes, the rest are the BatchNorm all-reduces, 2 x 3 x 2 less those combined.
    tagged = dict(line.split("\t", 1) for line in (tmp_path / "rows.tsv").read_text().splitlines()
                  if line.startswith("scaling\t"))
    scaling = json.loads(tagged["scaling"])
    assert 0.99 <= sum(scaling["gradient_groups_bytes"]) / (4 * scaling["params"]) <= 1.01
    assert 6 <= len(scaling["serial_allreduces_bytes"]) <= 12
    assert max(scaling["serial_allreduces_bytes"]) < 1000
    assert scaling["other_collectives"] == 0
