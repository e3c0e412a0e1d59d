"""Evaluate a trained model, a classical method, or compare several, with the paper's Table 1.

    python eval.py --config configs/demo.py [--workdir DIR] [--checkpoint STEP] \
        [--method model|patchmatch|telea|ns] [--metrics l1,psnr,ssim,lpips,fid,is]
    python eval.py --config configs/demo.py --compare model,patchmatch,telea [--metrics ...]

Prints the table (each metric per hole-ratio bin x {N, B}), writes results.json and results.md
(results_<method>.* for the classical methods) into the workdir, atomically (a full disk keeps
the old files), and names the files it wrote; `--compare` writes
comparison.json and comparison.md, a row per method on identical pairs (an entry may also be the
path of another training workdir, e.g. the ordinary-convolution baseline). LPIPS, FID and IS
need weights files (see README, "Evaluation"). Config values can be overridden, e.g.
`--config.eval.num_images=16`. See `pconv_jax/evaluation/table1.py`.
"""

from absl import app, flags
from ml_collections import config_flags

from pconv_jax import cli
from pconv_jax.inference.methods import NAMES as METHODS

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (path.py[:arg])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (default: "
                               "workdirs/<experiment>_<stage>, as train.py)")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "checkpoint step (default: latest)")
_METHOD = flags.DEFINE_enum("method", None, list(METHODS),
                            "model, patchmatch, or OpenCV's telea / ns "
                            "(default: config.eval.method)")
_COMPARE = flags.DEFINE_list("compare", None, "methods to compare on identical pairs, e.g. "
                             "model,patchmatch,telea; an entry may be another workdir's path")
_METRICS = flags.DEFINE_list("metrics", None, "of l1,psnr,ssim,lpips,fid,is "
                             "(default: config.eval.metrics)")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _METHOD.value and _COMPARE.value:
        raise ValueError("--method and --compare exclude each other: list the method in "
                         "--compare")
    from pconv_jax import config as config_lib
    config = _CONFIG.value
    config_lib.validate(config)
    from pconv_jax.inference import evaluate
    workdir = _WORKDIR.value or config_lib.default_workdir(config.experiment, config.stage)
    evaluate.run(config, workdir, method=_METHOD.value, compare=_COMPARE.value,
                 metric_names=_METRICS.value, checkpoint_step=_CHECKPOINT.value)


if __name__ == "__main__":
    cli.run(main)
