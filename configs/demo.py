"""The bundled demo photographs: a small network at 64x64 that trains in minutes on a CPU.

Perceptual and style terms are off (they need VGG16 weights); to turn them on:
    --config.loss.vgg_weights=vgg16.pth --config.loss.weights.perceptual=0.05 \
    --config.loss.weights.style_out=120 --config.loss.weights.style_comp=120
"""

from pconv_jax.config import base_config, parse_config_arg


def get_config(arg: str | None = None):
    arg = parse_config_arg(arg)
    config = base_config("demo", arg, finetune_learning_rate=5e-4, finetune_steps=100)
    config.data.name = "demo"
    config.data.image_size = 64
    config.data.batch_size = 8
    config.data.eval_images = 8
    config.model.depth = 4
    config.model.base_width = 16
    config.model.max_width = 64
    config.loss.vgg_weights = ""
    for term in ("perceptual", "style_out", "style_comp"):
        config.loss.weights[term] = 0.0
    config.train.learning_rate = 2e-3 if arg.stage == "train" else config.train.learning_rate
    config.train.num_steps = 300 if arg.stage == "train" else config.train.num_steps
    config.train.log_every_steps = 25
    config.train.checkpoint_every_steps = 100
    config.train.eval_every_steps = 100
    config.lock()
    return config
