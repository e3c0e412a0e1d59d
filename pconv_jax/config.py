"""The base config every `configs/*.py` starts from, and the `:arg` syntax of config files.

A config file's `get_config(arg)` takes a comma-separated list of tokens, in any order:

- a stage: `train` (default) or `finetune`;
- `conv`: the paper's baseline, the same network with ordinary convolutions;
- for files with several resolutions (`celeba_hq.py`), the image size: `256` or `512`.

E.g. `--config configs/celeba_hq.py:512,finetune,conv`. An unknown token is an error.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from pconv_jax.loss import losses
from pconv_jax.data import masks
from pconv_jax.network import unet

STAGES = ("train", "finetune")


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    """The parsed `:arg` of a config file."""
    stage: str = "train"
    conv: bool = False
    size: int | None = None


def parse_config_arg(arg: str | None, *, sizes: tuple[int, ...] = ()) -> ConfigArg:
    """Parses 'token,token,...' (stage, 'conv', and one of `sizes`); raises on unknown tokens."""
    stage, conv, size = "train", False, None
    for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        if token in STAGES:
            stage = token
        elif token == "conv":
            conv = True
        elif token.isdigit() and int(token) in sizes:
            size = int(token)
        else:
            valid = list(STAGES) + ["conv"] + [str(s) for s in sizes]
            raise ValueError(f"unknown config argument {token!r} in {arg!r}; use a comma-separated "
                             f"list of: {', '.join(valid)}")
    return ConfigArg(stage, conv, size)


def base_config(experiment: str, arg: ConfigArg, *, finetune_learning_rate: float = 5e-5,
                finetune_steps: int | None = None) -> ml_collections.ConfigDict:
    """The full config with every section at its default, set up for `arg`'s stage and variant.

    Sections: model, loss, data, masks, eval (owned by their modules) and train (here).
    `experiment` names the default workdir `workdirs/<experiment>[_conv]_<stage>`.
    """
    from pconv_jax.data import pipeline as data
    from pconv_jax.evaluation import table1  # TensorFlow & co.: only when a full config is built
    config = ml_collections.ConfigDict()
    config.experiment = experiment + ("_conv" if arg.conv else "")
    config.stage = arg.stage
    config.seed = 0
    config.model = unet.default_config()
    config.model.partial = not arg.conv
    config.loss = losses.default_config()
    config.data = data.default_config()
    config.masks = masks.default_mask_config()
    config.eval = table1.default_config()
    config.train = train_config()
    if arg.stage == "finetune":
        set_finetune(config, learning_rate=finetune_learning_rate, num_steps=finetune_steps)
    return config


def train_config() -> ml_collections.ConfigDict:
    """`config.train`: optimisation, schedule, checkpoints and logging."""
    return ml_collections.ConfigDict(dict(
        learning_rate=2e-4,        # Adam; the paper: 2e-4 to train, 5e-5 to fine-tune
        adam_b1=0.9,
        adam_b2=0.999,
        num_steps=1000,
        freeze_encoder_bn=False,   # fine-tuning: encoder BN statistics and scale/bias frozen
        init_from="",              # workdir whose latest checkpoint initialises the network
                                   # (fine-tuning starts from the train stage's workdir)
        log_every_steps=100,       # metrics to TensorBoard; the non-finite-loss check
        checkpoint_every_steps=1000,
        keep_checkpoints=3,
        async_checkpoints=True,
        eval_every_steps=1000,     # L1 / PSNR of the fixed held-out batch, and its image grid
        eval_batch_size=8,         # images in that held-out batch (all processes see it whole)
    ))


def set_finetune(config: ml_collections.ConfigDict, *, learning_rate: float,
                 num_steps: int | None) -> None:
    """Switches `config` to the paper's fine-tuning stage, starting from the train stage."""
    config.stage = "finetune"
    config.train.learning_rate = learning_rate
    config.train.freeze_encoder_bn = True
    config.train.init_from = default_workdir(config.experiment, "train")
    if num_steps is not None:
        config.train.num_steps = num_steps


def default_workdir(experiment: str, stage: str) -> str:
    """`workdirs/<experiment>_<stage>` relative to the current directory."""
    return os.path.join("workdirs", f"{experiment}_{stage}")
