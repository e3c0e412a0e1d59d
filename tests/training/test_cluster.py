"""Launching on a cluster: what each launcher's environment gives `jax.distributed.initialize`
(pure functions over environment dicts), two local processes per launcher on loopback, and the
one-line refusal of a launch described only in part."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from pconv_jax.training import cluster, mesh
from tests.helpers.commands import assert_one_line_error, run_command
from tests.helpers.training import REPO

# One task per node on two nodes, as `srun` inside examples/slurm.sbatch starts it.
SLURM_TASK_PER_NODE = {
    "SLURM_JOB_ID": "1234", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_GTIDS": "1", "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu[003-004]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_NODELIST": "gpu[003-004]",
}


LAUNCH_VARIABLES = re.compile(r"(SLURM_|OMPI_|JAX_COORDINATOR|JAX_LOCAL_DEVICE_IDS|TORCHELASTIC_|"
                              r"TPU_WORKER_HOSTNAMES$|JOB_COMPLETION_INDEX$|MASTER_ADDR$|"
                              r"MASTER_PORT$|WORLD_SIZE$|RANK$|LOCAL_RANK$|LOCAL_WORLD_SIZE$)")


def without_launchers(env) -> dict:
    """`env` less any launcher's variables (a test may itself run under SLURM or torchrun)."""
    return {k: v for k, v in env.items() if not LAUNCH_VARIABLES.match(k)}


def test_single_machine_is_left_alone():
    assert cluster.detect({}) is None
    assert cluster.detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert cluster.detect({**SLURM_TASK_PER_NODE, "SLURM_STEP_NUM_TASKS": "1",
                           "SLURM_PROCID": "0"}) is None
    assert cluster.detect({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    assert cluster.detect({"JOB_COMPLETION_INDEX": "0"}, num_processes=1) is None
    assert cluster.detect({}, num_processes=1) is None


def test_slurm_one_task_per_node_drives_every_gpu():
    launch = cluster.detect(SLURM_TASK_PER_NODE)
    # JAX's own SLURM detection would pass local_device_ids=[SLURM_LOCALID] = [0]: one GPU.
    assert launch == cluster.Launch("slurm", "gpu003:62674", 2, 1, None)
    assert launch.jax_arguments() == {
        "coordinator_address": "gpu003:62674", "num_processes": 2, "process_id": 1,
        "local_device_ids": None, "cluster_detection_method": "deactivate"}
    assert cluster.detect({**SLURM_TASK_PER_NODE, "JAX_COORDINATOR_PORT": "1500"}
                          ).coordinator_address == "gpu003:1500"
    assert cluster.detect({**SLURM_TASK_PER_NODE, "JAX_COORDINATOR_ADDRESS": "10.0.0.9:77"}
                          ).coordinator_address == "10.0.0.9:77"


def test_slurm_one_task_per_gpu_gets_its_gpu():
    per_gpu = {**SLURM_TASK_PER_NODE, "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "11",
               "SLURM_LOCALID": "3", "SLURM_GTIDS": "8,9,10,11,12,13,14,15",
               "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
    assert cluster.detect(per_gpu) == cluster.Launch("slurm", "gpu003:62674", 16, 11, (3,))
    assert cluster.detect(per_gpu).jax_arguments()["local_device_ids"] == [3]
    without_gtids = {k: v for k, v in per_gpu.items() if k != "SLURM_GTIDS"}
    assert cluster.detect(without_gtids).local_device_ids == (3,)
    # --gpus-per-task=1 already made one GPU visible to each task: it is that task's device 0.
    assert cluster.detect({**per_gpu, "CUDA_VISIBLE_DEVICES": "3"}).local_device_ids is None
    assert cluster.detect({**per_gpu, "JAX_LOCAL_DEVICE_IDS": "6,7"}).local_device_ids == (6, 7)


def test_open_mpi():
    ompi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    # Open MPI 4 names mpirun's host; Open MPI 5 needs the coordinator passed on.
    orte = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"}
    assert cluster.detect({**ompi, **orte}) == cluster.Launch(
        "openmpi", "10.96.0.1:62624", 4, 2, None)
    assert cluster.detect({**ompi, "JAX_COORDINATOR_ADDRESS": "h0:1234"}) == cluster.Launch(
        "openmpi", "h0:1234", 4, 2, None)
    per_gpu = {**ompi, "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert cluster.detect(per_gpu, "h0:1234").local_device_ids == (1,)
    # mpirun inside an sbatch script: Open MPI's variables, not the batch step's, describe it.
    batch = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
    assert cluster.detect({**batch, **ompi, **orte}).launcher == "openmpi"


def test_kubernetes_indexed_job():
    pod = {"JOB_COMPLETION_INDEX": "1", "HOSTNAME": "pconv-train-1"}
    expected = cluster.Launch("kubernetes", "pconv-train-0.pconv-train:1234", 2, 1, None)
    assert cluster.detect(pod, "pconv-train-0.pconv-train:1234", 2) == expected
    assert cluster.detect({**pod, "JAX_COORDINATOR_ADDRESS": "pconv-train-0.pconv-train:1234"},
                          num_processes=2) == expected


def test_torchrun_style():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert cluster.detect(env) == cluster.Launch("torchrun", "10.0.0.1:29500", 2, 1, None)
    # Under torchrun its agent already listens on MASTER_PORT.
    assert cluster.detect({**env, "TORCHELASTIC_USE_AGENT_STORE": "True"}
                          ).coordinator_address == "10.0.0.1:29501"
    per_gpu = {**env, "WORLD_SIZE": "16", "RANK": "9", "LOCAL_RANK": "1",
               "LOCAL_WORLD_SIZE": "8"}
    assert cluster.detect(per_gpu).local_device_ids == (1,)
    # torchrun inside a SLURM step: torchrun's variables describe the processes.
    assert cluster.detect({**SLURM_TASK_PER_NODE, **env}).launcher == "torchrun"


def test_explicit_flags_win():
    assert cluster.detect({}, "10.0.0.1:1234", 2, 0) == cluster.Launch(
        "flags", "10.0.0.1:1234", 2, 0, None)
    half_slurm = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}
    assert cluster.detect(half_slurm, "10.0.0.1:1234", 2, 1).process_id == 1
    assert cluster.detect(SLURM_TASK_PER_NODE, num_processes=4).num_processes == 4


@pytest.mark.parametrize("env, flags, message", [
    ({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, (),
     r"SLURM job of 2 tasks, but this process was not started by srun"),
    ({"SLURM_JOB_ID": "9", "SLURM_NNODES": "2"}, (), r"not started by srun"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, (), r"torchrun launch lacks MASTER_ADDR and MASTER_PORT"),
    ({"RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1"}, (), r"lacks WORLD_SIZE"),
    ({"JOB_COMPLETION_INDEX": "1"}, (), r"kubernetes launch lacks --coordinator_address=.*"
     r"--num_processes=<the Job's completions>"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, (),
     r"openmpi launch lacks --coordinator_address"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, ("h:1", 2),
     r"slurm launch lacks --process_id"),
    ({}, (None, 2), r"--coordinator_address, --num_processes and --process_id together "
     r"\(missing --coordinator_address, --process_id\)"),
    ({"JOB_COMPLETION_INDEX": "2"}, ("h:1", 2), r"process index 2 is not in 0..1"),
    ({"SLURM_JOB_ID": "9", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "x"}, (),
     r"SLURM_PROCID='x' is not an integer"),
])
def test_half_described_launch_is_refused(env, flags, message):
    with pytest.raises(ValueError, match=message):
        cluster.detect(env, *flags)


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("gpu[03-04]-ib,cpu1", "gpu03-ib")])
def test_first_host(nodelist, host):
    assert cluster.first_host(nodelist) == host


def test_initialize_distributed_passes_every_argument(monkeypatch):
    calls = []
    monkeypatch.setattr(mesh.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for name in set(os.environ) - set(without_launchers(os.environ)):
        monkeypatch.delenv(name)
    for name, value in SLURM_TASK_PER_NODE.items():
        monkeypatch.setenv(name, value)
    assert mesh.initialize_distributed() is True
    assert calls == [{"coordinator_address": "gpu003:62674", "num_processes": 2,
                      "process_id": 1, "local_device_ids": None,
                      "cluster_detection_method": "deactivate"}]


@pytest.mark.slow
def test_train_refuses_a_half_described_launch(monkeypatch, tmp_path):
    for name in set(os.environ) - set(without_launchers(os.environ)):
        monkeypatch.delenv(name)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = run_command("train.py", "--config", "configs/demo.py", "--workdir",
                         str(tmp_path / "run"), timeout=120)
    assert_one_line_error(result, r"torchrun launch lacks MASTER_ADDR and MASTER_PORT")
    assert not (tmp_path / "run").exists()


def test_sbatch_example_runs_one_task_per_node():
    script = REPO / "examples" / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    directives = re.findall(r"^#SBATCH (\S+)", script.read_text(), re.MULTILINE)
    assert "--ntasks-per-node=1" in directives and "--gpus-per-node=8" in directives
    assert re.search(r"^srun .*python train.py \"\$@\"$", script.read_text(), re.MULTILINE)


def test_kubernetes_example_describes_a_whole_launch():
    yaml = pytest.importorskip("yaml")
    service, job = yaml.safe_load_all((REPO / "examples" / "kubernetes_job.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    pods = job["spec"]["template"]["spec"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert pods["subdomain"] == service["metadata"]["name"]
    count = job["spec"]["completions"]
    assert job["spec"]["parallelism"] == count
    [container] = pods["containers"]
    flags = dict(arg[2:].split("=", 1) for arg in container["args"])
    assert flags["coordinator_address"].startswith(
        f"{job['metadata']['name']}-0.{service['metadata']['name']}:")
    for index in range(count):  # what each pod passes to jax.distributed.initialize
        launch = cluster.detect({"JOB_COMPLETION_INDEX": str(index)},
                                flags["coordinator_address"], int(flags["num_processes"]))
        assert (launch.num_processes, launch.process_id) == (count, index)


WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.getcwd())
    import jax
    from pconv_jax.training import mesh
    assert mesh.initialize_distributed(*json.loads(sys.argv[1]))
    print("SEEN", json.dumps([jax.process_count(), jax.process_index(), jax.local_device_count(),
                              jax.config.values["jax_cuda_visible_devices"]]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env(launcher: str, index: int, port: int) -> tuple[dict, list]:
    """(variables, [coordinator, count, index] flags) of process `index` of 2 on loopback."""
    if launcher == "slurm_task_per_node":
        return {**SLURM_TASK_PER_NODE, "SLURM_PROCID": str(index), "SLURM_NODEID": str(index),
                "SLURM_GTIDS": str(index), "SLURM_STEP_NODELIST": "127.0.0.1",
                "JAX_COORDINATOR_PORT": str(port)}, [None, None, None]
    if launcher == "slurm_task_per_gpu":  # two tasks on one node
        return {**SLURM_TASK_PER_NODE, "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index),
                "SLURM_NODEID": "0", "SLURM_GTIDS": "0,1", "SLURM_STEP_NODELIST": "127.0.0.1",
                "SLURM_STEP_TASKS_PER_NODE": "2", "JAX_COORDINATOR_PORT": str(port)}, [
                    None, None, None]
    if launcher == "openmpi":
        return {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(index),
                "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
                "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://127.0.0.1:34911",
                "JAX_COORDINATOR_PORT": str(port)}, [None, None, None]
    if launcher == "kubernetes":  # the manifest passes the coordinator and the count as flags
        return {"JOB_COMPLETION_INDEX": str(index)}, [f"127.0.0.1:{port}", 2, None]
    assert launcher == "torchrun"
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "RANK": str(index), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}, [None, None, None]


@pytest.mark.slow
@pytest.mark.multidevice
@pytest.mark.parametrize("launcher, visible", [
    ("slurm_task_per_node", ["all", "all"]), ("slurm_task_per_gpu", ["0", "1"]),
    ("openmpi", ["all", "all"]), ("kubernetes", ["all", "all"]), ("torchrun", ["all", "all"])])
def test_two_processes_on_loopback(launcher, visible):
    """Each process joins the other and drives its host's devices: all of them for one process
    per host (the CPU client ignores the restriction, the CUDA setting shows what a GPU sees)."""
    port = _free_port()
    base = {k: v for k, v in without_launchers(os.environ).items() if k != "XLA_FLAGS"}
    base.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    workers = []
    for index in range(2):
        variables, flags = _launcher_env(launcher, index, port)
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(flags)], cwd=REPO,
            env={**base, **variables}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [w.communicate(timeout=240)[0].decode(errors="replace") for w in workers]
    for index, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, log[-3000:]
        seen = json.loads(log.split("SEEN ")[-1])
        assert seen == [2, index, 2, visible[index]], (launcher, seen)
