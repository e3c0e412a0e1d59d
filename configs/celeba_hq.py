"""CelebA-HQ (TFDS `celeb_a_hq/256` or `celeb_a_hq/512`, manual download), depth 7 or 8.

Arg: comma-separated size (256 default, or 512), stage (train | finetune) and `conv`:

    python train.py --config configs/celeba_hq.py            # 256x256, depth 7
    python train.py --config configs/celeba_hq.py:512        # 512x512, depth 8
    python train.py --config configs/celeba_hq.py:512,finetune
"""

from pconv_jax import config as config_lib
from pconv_jax.configs import default


def get_config(arg: str | None = None):
    arg = config_lib.parse_config_arg(arg, sizes=(256, 512))
    size = arg.size or 256
    config = default.get_config()
    config.experiment = f"celeba_hq_{size}"
    config.data.name = f"celeb_a_hq/{size}"
    config.data.image_size = size
    config.data.batch_size = 6           # the paper: batch 6 on one GPU (scale with devices)
    config.data.worker_processes = -1    # a GPU host: every core but one draws examples
    config.model.depth = 7 if size == 256 else 8
    config.train.num_steps = 300_000
    config.train.checkpoint_every_steps = 5_000
    config.train.eval_every_steps = 5_000
    config.loss.vgg_weights = "vgg16-397923af.pth"
    config.eval.masks_per_cell = 100     # generated test set: 6 bins x {N, B} x 100 masks
    return default.set_stage(config, arg, finetune_steps=50_000)
