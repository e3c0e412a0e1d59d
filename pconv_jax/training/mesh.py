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

from pconv_jax.training import cluster

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Calls `jax.distributed.initialize` when the run is multi-process; returns whether it did.

    Explicit arguments (--coordinator_address/--num_processes/--process_id) win; without them the
    launcher's environment is read (`cluster.detect`: SLURM, Open MPI, Kubernetes Indexed Jobs,
    torchrun-style variables, Cloud TPU). A single-process run is left alone; a launch described
    only in part raises ValueError.
    """
    launch = cluster.detect(os.environ, coordinator_address, num_processes, process_id)
    if launch is None:
        return False
    jax.distributed.initialize(**launch.jax_arguments())
    logging.info("distributed (%s): process %d of %d, local devices %s: %d local / %d global",
                 launch.launcher, jax.process_index(), jax.process_count(),
                 "all" if launch.local_device_ids is None else list(launch.local_device_ids),
                 jax.local_device_count(), jax.device_count())
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
