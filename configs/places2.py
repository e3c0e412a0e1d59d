"""Places2 (TFDS `places365_small`, 256x256), the paper's network (depth 7) and recipe.

    python train.py --config configs/places2.py            # train: Adam 2e-4
    python train.py --config configs/places2.py:finetune   # fine-tune: 5e-5, encoder BN frozen
    python train.py --config configs/places2.py:conv       # the baseline with ordinary convs
"""

from pconv_jax.configs import default


def get_config(arg: str | None = None):
    config = default.get_config()
    config.experiment = "places2"
    config.data.name = "places365_small"
    config.data.batch_size = 6           # the paper: batch 6 on one GPU (scale with devices)
    config.data.worker_processes = -1    # a GPU host: every core but one draws examples
    config.train.num_steps = 500_000
    config.train.checkpoint_every_steps = 5_000
    config.train.eval_every_steps = 5_000
    config.loss.vgg_weights = "vgg16-397923af.pth"   # torchvision's file; see the README
    config.eval.masks_per_cell = 100     # generated test set: 6 bins x {N, B} x 100 masks
    return default.set_stage(config, arg, finetune_steps=100_000)
