"""Evaluate a trained model, a classical method, or compare several, with the paper's Table 1.

    python eval.py --config configs/demo.py [--workdir DIR] [--config.eval.method=telea] \
        [--config.eval.metrics=l1,psnr,ssim,lpips,fid,is] [--config.eval.checkpoint_step=STEP]
    python eval.py --config configs/demo.py --compare model,patchmatch,telea

What to evaluate is read from the config's `eval` section (method: model, patchmatch, telea or
ns; metrics; checkpoint_step, -1 = the latest), set like any setting with `--config.eval.KEY=`.
Prints the table (each metric per hole-ratio bin x {N, B}), writes results.json and results.md
(results_<method>.* for the classical methods) into the workdir, atomically (a full disk keeps
the old files), and names the files it wrote; `--compare` writes
comparison.json and comparison.md, a row per method on identical pairs (an entry may also be the
path of another training workdir, e.g. the ordinary-convolution baseline). LPIPS, FID and IS
need weights files (see README, "Evaluation"). See `pconv_jax/evaluation/table1.py`.
"""

from absl import app, flags
from ml_collections import config_flags

from pconv_jax import cli
from pconv_jax import config as config_lib

_CONFIG = config_lib.define_config_flag("config file (path.py[:arg]); what to evaluate: "
                                        "--config.eval.method, .metrics, .checkpoint_step")
_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (default: "
                               "workdirs/<experiment>_<stage>, as train.py)")
_COMPARE = flags.DEFINE_list("compare", None, "methods to compare on identical pairs, e.g. "
                             "model,patchmatch,telea; an entry may be another workdir's path")
flags.mark_flags_as_required(["config"])

# The flags that became config keys (one spelling for each setting).
RENAMED = {"method": "config.eval.method", "metrics": "config.eval.metrics",
           "checkpoint": "config.eval.checkpoint_step"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _COMPARE.value and "eval.method" in config_flags.get_override_values(flags.FLAGS["config"]):
        raise ValueError("--config.eval.method and --compare exclude each other: list the "
                         "method in --compare")
    config_lib.validate(config)
    from pconv_jax.inference import evaluate
    workdir = _WORKDIR.value or config_lib.default_workdir(config.experiment, config.stage)
    evaluate.run(config, workdir, compare=_COMPARE.value)


if __name__ == "__main__":
    cli.run(main, renamed=RENAMED)
