"""Any image folder (e.g. the high-resolution Places2 images) at 512x512, depth 8.

    python train.py --config configs/folder.py --config.data.folder=/data/places2_hr
"""

from pconv_jax.configs import default


def get_config(arg: str | None = None):
    config = default.get_config()
    config.experiment = "folder"
    config.data.name = "folder"          # required: --config.data.folder=/path/to/images
    config.data.image_size = 512
    config.data.batch_size = 6           # the paper: batch 6 on one GPU (scale with devices)
    config.data.worker_processes = -1    # a GPU host: every core but one draws examples
    config.model.depth = 8
    config.train.num_steps = 500_000
    config.train.checkpoint_every_steps = 5_000
    config.train.eval_every_steps = 5_000
    config.loss.vgg_weights = "vgg16-397923af.pth"
    config.eval.masks_per_cell = 100     # generated test set: 6 bins x {N, B} x 100 masks
    return default.set_stage(config, arg, finetune_steps=100_000)
