"""Data parallelism: 8 simulated devices compute the step of 1 device (global BatchNorm), and
two processes compute the step of one process with as many devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from pconv_jax import config as config_lib
from pconv_jax.training import mesh
from tests.helpers.steps import assert_close, sgd_step
from tests.helpers.training import REPO, default_config, random_batch


@pytest.mark.slow
@pytest.mark.multidevice
def test_eight_devices_equal_one_device():
    assert jax.device_count() == 8
    batch = random_batch(8)
    metrics_1, params_1, stats_1, grads_1 = sgd_step(batch, jax.devices()[:1])
    metrics_8, params_8, stats_8, grads_8 = sgd_step(batch, jax.devices())
    assert_close(metrics_8, metrics_1, 1e-5)
    assert_close(grads_8, grads_1, 1e-5)
    assert_close(stats_8, stats_1, 1e-5)
    # Equal losses and gradients mean global statistics: per-device BatchNorm would normalise
    # each device's 1-image share by its own mean and variance and change both.


def test_batch_helpers():
    data_mesh = mesh.make_data_mesh()
    config = default_config()
    config.data.batch_size = 16
    config_lib.validate(config, data_mesh.size)
    config.data.batch_size = 12
    with pytest.raises(ValueError, match="multiple of the device count 8"):
        config_lib.validate(config, data_mesh.size)
    array = mesh.global_batch(random_batch(8), data_mesh)["image"]
    assert (array.sharding.spec == jax.sharding.PartitionSpec("data")
            and array.shape == (8, 32, 32, 3))
    assert mesh.allgather_json({"position": 3}) == [{"position": 3}]
    assert mesh.initialize_distributed() is False  # a single-process run is left alone
    with pytest.raises(ValueError, match="--coordinator_address, --num_processes and --process_id"):
        mesh.initialize_distributed(num_processes=2)


WORKER = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, os.getcwd())
    from pconv_jax.training import mesh
    mesh.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    import numpy as np
    from tests.helpers.steps import sgd_step, tiny_config
    from tests.helpers.training import random_batch, tree_equal
    batch = random_batch(8)
    local = {k: v[4 * process_id:4 * (process_id + 1)] for k, v in batch.items()}
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    metrics, params, stats, grads = sgd_step(local, jax.devices())
    states = mesh.allgather_json({"position": process_id})
    assert states == [{"position": 0}, {"position": 1}], states

    # Every process checkpoints; each gets its own data-pipeline position back.
    import optax
    from pconv_jax.training import checkpoints
    from pconv_jax.training.step import create_train_state
    data_mesh = mesh.make_data_mesh()
    _, state = create_train_state(tiny_config(), optax.adam(1e-3), data_mesh)
    ckpt = checkpoints.Checkpointer(sys.argv[4], save_every_steps=1, keep=1)
    ckpt.save(5, model=state.model_item(), train=state.train_item(),
              data_state={"position": 10 + process_id})
    ckpt.wait()
    replicated = mesh.replicated(data_mesh)
    model, _, data_states, step = ckpt.restore(
        checkpoints.abstract_like(state.model_item(), replicated),
        checkpoints.abstract_like(state.train_item(), replicated))
    ckpt.close()
    assert step == 5 and data_states[process_id] == {"position": 10 + process_id}, data_states
    assert tree_equal(model["params"], state.params)
    if process_id == 0:
        np.savez(out, **{"metrics/" + k: v for k, v in metrics.items()},
                 **{"grads/" + k: v for k, v in grads.items()},
                 **{"stats/" + k: v for k, v in stats.items()})
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_equal_one_process(tmp_path):
    out, port = str(tmp_path / "step.npz"), str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    checkpoints = str(tmp_path / "checkpoints")
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, out, checkpoints],
                                cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
    logs = [w.communicate(timeout=300)[0].decode(errors="replace") for w in workers]
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
    result = np.load(out)
    metrics_4, _, stats_4, grads_4 = sgd_step(random_batch(8), jax.devices()[:4])
    for prefix, expected in (("metrics", metrics_4), ("grads", grads_4), ("stats", stats_4)):
        got = {k.split("/", 1)[1]: result[k] for k in result.files if k.startswith(prefix + "/")}
        assert_close(got, {k: np.asarray(v) for k, v in expected.items()}, 1e-5)
    assert os.path.isdir(os.path.join(checkpoints, "5", "model"))
