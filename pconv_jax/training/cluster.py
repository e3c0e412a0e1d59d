"""Who this process is in a multi-process launch, read from the launcher's environment.

`detect(env, ...)` returns a `Launch` (coordinator address, process count, process index, local
device ids) or None for a single-process run, from explicit flags or one of the launchers in
`LAUNCHERS` (SLURM, Open MPI, Kubernetes Indexed Jobs, torchrun-style variables, Cloud TPU).
One process per host drives every local GPU (`local_device_ids` None); several processes on a
host get one GPU each. A launch described only in part raises ValueError (one line) instead of
letting each host train alone. Pure functions of an environment mapping: no JAX here;
`mesh.initialize_distributed` hands the result to `jax.distributed.initialize`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

_SEE = "see docs/cluster.md"


@dataclasses.dataclass(frozen=True)
class Launch:
    """The arguments of `jax.distributed.initialize` for this process."""
    launcher: str  # a key of LAUNCHERS, or "flags"
    coordinator_address: str | None  # None only for "cloud_tpu": JAX reads the TPU metadata
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None  # None: every device this process can see

    def jax_arguments(self) -> dict:
        """Keyword arguments of `jax.distributed.initialize`. Everything is given and JAX's own
        detection is off: it would restrict a SLURM or Open MPI process to one GPU."""
        if self.launcher == "cloud_tpu":
            return {}
        return {"coordinator_address": self.coordinator_address,
                "num_processes": self.num_processes, "process_id": self.process_id,
                "local_device_ids": (None if self.local_device_ids is None
                                     else list(self.local_device_ids)),
                "cluster_detection_method": "deactivate"}


@dataclasses.dataclass(frozen=True)
class _Found:
    """What a launcher's variables say; `needs` tells how to give a field they leave None."""
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None
    needs: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _int(env: Mapping[str, str], name: str) -> int | None:
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None


def _job_port(job_number: int) -> int:
    """A port that processes of one job agree on without talking, different for neighbouring
    jobs (JAX's choice for SLURM and Open MPI: 61440 + job mod 4096)."""
    return 61440 + job_number % 4096


def _address(env: Mapping[str, str], host: str, port: int) -> str:
    return f"{host}:{env.get('JAX_COORDINATOR_PORT') or port}"


def local_devices(env: Mapping[str, str], local_rank: int | None,
                  local_size: int | None) -> tuple[int, ...] | None:
    """The local device ids of process `local_rank` of `local_size` on its host: None (every
    device) for one process per host; one GPU each for several, except where the launcher
    already made one GPU visible (CUDA_VISIBLE_DEVICES of one entry). JAX_LOCAL_DEVICE_IDS wins."""
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        return tuple(int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(","))
    if (local_size or 1) <= 1:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    if visible and "," not in visible:
        return None
    return (local_rank or 0,)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,009]-ib,cpu1' -> 'gpu003-ib'."""
    prefix, ranges, suffix = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,\[]*)", nodelist).groups()
    return prefix + (re.split(r"[,-]", ranges)[0] if ranges else "") + suffix


def _tasks_on_this_node(env: Mapping[str, str]) -> int:
    """SLURM_GTIDS lists the tasks of this node; else the most of SLURM_STEP_TASKS_PER_NODE
    ('2(x3),1')."""
    if env.get("SLURM_GTIDS"):
        return len(env["SLURM_GTIDS"].split(","))
    counts = re.findall(r"(\d+)(?:\(x\d+\))?", env.get("SLURM_STEP_TASKS_PER_NODE", ""))
    return max((int(c) for c in counts), default=1)


def _slurm(env: Mapping[str, str]) -> _Found | None:
    if "SLURM_JOB_ID" not in env:
        return None
    if "SLURM_STEP_NUM_TASKS" not in env:  # the batch script itself, or a login shell
        tasks = max(_int(env, "SLURM_NTASKS") or 1, _int(env, "SLURM_NNODES") or 1)
        if tasks > 1:
            raise ValueError(f"a SLURM job of {tasks} tasks, but this process was not started "
                             "by srun (no SLURM_STEP_NUM_TASKS), so it would train alone: "
                             f"start it with `srun python train.py ...` ({_SEE})")
        return _Found(None, 1, None, None)  # one process; a flag may not borrow its index
    coordinator = None
    if env.get("SLURM_STEP_NODELIST"):
        coordinator = _address(env, first_host(env["SLURM_STEP_NODELIST"]),
                               _job_port(_int(env, "SLURM_JOB_ID")))
    return _Found(coordinator, _int(env, "SLURM_STEP_NUM_TASKS"), _int(env, "SLURM_PROCID"),
                  local_devices(env, _int(env, "SLURM_LOCALID"), _tasks_on_this_node(env)),
                  {"coordinator_address": "SLURM_STEP_NODELIST (or --coordinator_address)",
                   "process_id": "SLURM_PROCID (or --process_id)"})


def _open_mpi(env: Mapping[str, str]) -> _Found | None:
    if "OMPI_COMM_WORLD_SIZE" not in env:
        return None
    coordinator = None
    # Open MPI 4's mpirun names its own host; process 0 runs there when mpirun is started on
    # the first host. Open MPI 5 has no such variable: pass the coordinator.
    match = re.match(r"(\d+)\.\d+;tcp6?://\[?([^,:\]]+)", env.get("OMPI_MCA_orte_hnp_uri", ""))
    if match:
        coordinator = _address(env, match[2], _job_port(int(match[1]) // 4096))
    return _Found(coordinator, _int(env, "OMPI_COMM_WORLD_SIZE"),
                  _int(env, "OMPI_COMM_WORLD_RANK"),
                  local_devices(env, _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
                                _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")),
                  {"coordinator_address": "--coordinator_address=<first host>:<port> (or "
                   "mpirun -x JAX_COORDINATOR_ADDRESS=<first host>:<port>)",
                   "process_id": "OMPI_COMM_WORLD_RANK (or --process_id)"})


def _kubernetes(env: Mapping[str, str]) -> _Found | None:
    """An Indexed Job (or a JobSet's): the pod's completion index is the process index; the
    process count and the coordinator (pod 0 through the headless Service) come from flags."""
    if "JOB_COMPLETION_INDEX" not in env:
        return None
    return _Found(None, None, _int(env, "JOB_COMPLETION_INDEX"), local_devices(env, 0, 1),
                  {"coordinator_address": "--coordinator_address=<job>-0.<headless service>:"
                   "<port> (or JAX_COORDINATOR_ADDRESS)",
                   "num_processes": "--num_processes=<the Job's completions>"})


def _torchrun(env: Mapping[str, str]) -> _Found | None:
    if not any(name in env for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR")):
        return None
    coordinator = None
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        port = _int(env, "MASTER_PORT")
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            port += 1  # torchrun's agent already listens on MASTER_PORT
        coordinator = _address(env, env["MASTER_ADDR"], port)
    return _Found(coordinator, _int(env, "WORLD_SIZE"), _int(env, "RANK"),
                  local_devices(env, _int(env, "LOCAL_RANK"), _int(env, "LOCAL_WORLD_SIZE")),
                  {"coordinator_address": "MASTER_ADDR and MASTER_PORT (or --coordinator_address)",
                   "num_processes": "WORLD_SIZE (or --num_processes)",
                   "process_id": "RANK (or --process_id)"})


def _cloud_tpu(env: Mapping[str, str]) -> _Found | None:
    """A TPU pod slice: JAX reads everything from the TPU metadata (and drives every chip)."""
    return _Found(None, None, None, None) if "," in env.get("TPU_WORKER_HOSTNAMES", "") else None


# The launcher nearest the process first: torchrun or mpirun inside a SLURM job wins over SLURM.
LAUNCHERS: dict[str, Callable[[Mapping[str, str]], _Found | None]] = {
    "torchrun": _torchrun,
    "openmpi": _open_mpi,
    "slurm": _slurm,
    "kubernetes": _kubernetes,
    "cloud_tpu": _cloud_tpu,
}

_FLAGS = {"coordinator_address": "--coordinator_address", "num_processes": "--num_processes",
          "process_id": "--process_id"}


def detect(env: Mapping[str, str], coordinator_address: str | None = None,
           num_processes: int | None = None, process_id: int | None = None) -> Launch | None:
    """This process's launch, or None for a single process. Flags win over JAX_COORDINATOR_ADDRESS,
    which wins over what a launcher's variables imply; with all three flags no launcher is read."""
    given = {"coordinator_address": coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
             "num_processes": num_processes, "process_id": process_id}
    launcher, found = "flags", None
    if None in (coordinator_address, num_processes, process_id):
        launcher, found = next(((name, found) for name, read in LAUNCHERS.items()
                                if (found := read(env)) is not None), (launcher, found))
    if found is None:
        if all(value is None for value in given.values()):
            return None
        found = _Found(None, None, None, local_devices(env, 0, 1))
    if launcher == "cloud_tpu" and all(value is None for value in given.values()):
        return Launch(launcher, None, None, None, None)
    values = {name: getattr(found, name) if given[name] is None else given[name]
              for name in _FLAGS}
    if values["num_processes"] == 1:
        return None
    missing = [name for name in _FLAGS if values[name] is None]
    if missing and launcher == "flags":
        raise ValueError("a multi-process launch needs --coordinator_address, --num_processes and "
                         f"--process_id together (missing {', '.join(_FLAGS[m] for m in missing)})"
                         f", or a cluster environment: {_SEE}")
    if missing:
        needed = "; ".join(found.needs.get(m, _FLAGS[m]) for m in missing)
        raise ValueError(f"this {launcher} launch lacks {needed}: set them, or unset the "
                         f"launcher's variables to train on one host alone ({_SEE})")
    if not 0 <= values["process_id"] < values["num_processes"]:
        raise ValueError(f"process index {values['process_id']} is not in 0.."
                         f"{values['num_processes'] - 1} (the process count is "
                         f"{values['num_processes']})")
    return Launch(launcher, values["coordinator_address"], values["num_processes"],
                  values["process_id"], found.local_device_ids)
