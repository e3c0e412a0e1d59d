"""Any image folder (e.g. the high-resolution Places2 images) at 512x512, depth 8.

    python train.py --config configs/folder.py --config.data.folder=/data/places2_hr
"""

from pconv_jax.config import base_config, parse_config_arg


def get_config(arg: str | None = None):
    arg = parse_config_arg(arg)
    config = base_config("folder", arg, finetune_steps=100_000)
    config.data.name = "folder"
    config.data.folder = ""              # required: --config.data.folder=/path/to/images
    config.data.image_size = 512
    config.data.batch_size = 6           # the paper: batch 6 on one GPU (scale with devices)
    config.model.depth = 8
    config.train.num_steps = 500_000 if arg.stage == "train" else config.train.num_steps
    config.train.checkpoint_every_steps = 5_000
    config.train.eval_every_steps = 5_000
    config.loss.vgg_weights = "vgg16-397923af.pth"
    config.eval.masks_per_cell = 100     # generated test set: 6 bins x {N, B} x 100 masks
    config.lock()
    return config
