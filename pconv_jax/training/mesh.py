"""Data parallelism over every device of every host: one mesh axis 'data'.

Parameters are replicated and the batch is sharded on 'data', so one `jax.jit` step sees the
global batch (BatchNorm statistics are global) and gradients of replicated parameters come back
already summed: no pmap, no shard_map, no pmean.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def _cluster_is_multiprocess() -> bool:
    """Whether the environment describes a multi-process launch that JAX's
    `jax.distributed.initialize()` detects by itself (SLURM, Open MPI, Cloud TPU pods, or an
    explicit JAX_COORDINATOR_ADDRESS)."""
    env = os.environ
    return (int(env.get("SLURM_NTASKS", "1") or 1) > 1
            or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", "")
            or "JAX_COORDINATOR_ADDRESS" in env)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Calls `jax.distributed.initialize` when the run is multi-process; returns whether it did.

    Explicit arguments (e.g. from --coordinator_address/--num_processes/--process_id) win; without
    them a cluster environment (SLURM, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS) is detected.
    A single-process run (no arguments, no cluster variables) is left alone.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not _cluster_is_multiprocess():
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError("a multi-process launch needs --coordinator_address, --num_processes and "
                         "--process_id together (or none of them, in a cluster environment)")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def make_data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh ('data',) over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Explicit,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of parameters, optimizer state and other replicated values."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """The sharding of a batch: its leading axis split over 'data'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray],
                 mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Process-local NumPy arrays -> global arrays sharded on 'data' (no host synchronisation)."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places every array of `tree` replicated on the mesh (same value on every process)."""
    return jax.device_put(tree, replicated(mesh))


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (a collective on many hosts)."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int32))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:data.size] = data
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(gathered, np.ravel(sizes))]
