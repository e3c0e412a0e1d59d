"""Trains the partial-convolution inpainting network.

    python train.py --config configs/places2.py                  # train stage
    python train.py --config configs/places2.py:finetune         # fine-tune stage
    python train.py --config configs/demo.py --config.train.num_steps=50 --workdir /tmp/demo

The workdir defaults to workdirs/<experiment>_<stage> (e.g. workdirs/places2_train); a run in a
workdir that holds checkpoints resumes from the latest one (with the same data, masks, seed and
stage unless --allow_config_change; the settings of every run are kept, see
`pconv_jax/training/workdir.py`). Multi-host: start one process per host with srun (SLURM),
mpirun (Open MPI), a Kubernetes Indexed Job, torchrun-style variables or --coordinator_address,
--num_processes and --process_id; each process drives every local GPU (docs/cluster.md).
"""

from absl import app, flags, logging

from pconv_jax import cli
from pconv_jax import config as config_lib

_CONFIG = config_lib.define_config_flag("config file, e.g. configs/places2.py:finetune")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs (default: "
                               "workdirs/<experiment>_<stage>)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "multi-host: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "resume a workdir even if the seed, data, masks or stage "
    "differ from its config.json (the earlier config.json is kept as config.<step>.json)")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    config_lib.validate(config)  # before JAX, TensorFlow or the workdir
    from pconv_jax.training import loop, mesh  # after absl parsed the flags
    mesh.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    workdir = _WORKDIR.value or config_lib.default_workdir(config.experiment, config.stage)
    logging.info("workdir: %s", workdir)
    loop.train_and_evaluate(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
    cli.run(main)
