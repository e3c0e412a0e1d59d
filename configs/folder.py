"""Any image folder (e.g. the high-resolution Places2 images) at 512x512, depth 8; `:cpu`: a
folder of 10 to 1,000 photos on a laptop CPU in minutes (64x64, a small network, no VGG16).

    python train.py --config configs/folder.py --config.data.folder=/data/places2_hr
    python train.py --config configs/folder.py:cpu --config.data.folder=/path/to/photos
"""

from pconv_jax import config as config_lib
from pconv_jax.configs import default

demo = config_lib.sibling(__file__, "demo")


def get_config(arg: str | None = None):
    arg = config_lib.parse_config_arg(arg, options=("cpu",))
    config = default.get_config()
    config.experiment = "folder"
    config.data.name = "folder"          # required: --config.data.folder=/path/to/images
    if "cpu" in arg.options:
        return _cpu(config, arg)
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


def _cpu(config, arg):
    """`:cpu`: 10 to 1,000 photos on a laptop CPU in minutes: the demo's network at 64x64 (no
    VGG16 needed), each photo scaled down whole, 4 photos held out."""
    demo.cpu_sized(config)
    config.experiment = "folder_cpu"
    config.data.resize_mode = "resize"   # the whole photo at 64x64, not a 64-px detail of it
    config.data.heldout_count = 4
    config.train.eval_batch_size = 4
    config.eval.num_images = 4
    return default.set_stage(config, arg, finetune_learning_rate=5e-4, finetune_steps=100)
