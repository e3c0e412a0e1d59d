"""Evaluate a trained model (or OpenCV's Telea / Navier-Stokes) with the paper's Table 1 protocol.

    python eval.py --config configs/demo.py [--workdir DIR] [--checkpoint STEP] \
        [--method model|telea|ns]

Prints the table (L1 % / PSNR / SSIM per hole-ratio bin x {N, B}) and writes results.json and
results.md (results_telea.* / results_ns.* for the baselines) into the workdir. Config values can
be overridden, e.g. `--config.eval.num_images=16`. See `pconv_jax/evaluation/table1.py`.
"""

from absl import app, flags
from ml_collections import config_flags

from pconv_jax import cli
from pconv_jax.evaluation.table1 import METHODS

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (path.py[:arg])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (default: "
                               "workdirs/<experiment>_<stage>, as train.py)")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: latest)")
_METHOD = flags.DEFINE_enum("method", None, list(METHODS),
                            "model, or OpenCV's telea / ns (default: config.eval.method)")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pconv_jax import config as config_lib
    config = _CONFIG.value
    config_lib.validate(config)
    from pconv_jax.inference import evaluate
    from pconv_jax.training.logs import quiet_library_logs
    quiet_library_logs()
    workdir = _WORKDIR.value or config_lib.default_workdir(config.experiment, config.stage)
    evaluate.run(config, workdir, method=_METHOD.value, checkpoint_step=_CHECKPOINT.value)


if __name__ == "__main__":
    cli.run(main)
