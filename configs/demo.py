"""The bundled demo photographs: a small network at 64x64 that trains in minutes on a CPU.

Perceptual and style terms are off (they need VGG16 weights); to turn them on:
    --config.loss.vgg_weights=vgg16.pth --config.loss.weights.perceptual=0.05 \
    --config.loss.weights.style_out=120 --config.loss.weights.style_comp=120
"""

from pconv_jax.configs import default


def get_config(arg: str | None = None):
    config = cpu_sized(default.get_config())
    config.experiment = "demo"
    config.data.name = "demo"
    config.eval.num_images = 8
    return default.set_stage(config, arg, finetune_learning_rate=5e-4, finetune_steps=100)


def cpu_sized(config):
    """A small network at 64x64 without VGG16 terms and a short schedule: minutes on a CPU."""
    config.data.image_size = 64
    config.model.depth = 4
    config.model.base_width = 16
    config.model.max_width = 64
    config.loss.vgg_weights = ""
    for term in ("perceptual", "style_out", "style_comp"):
        config.loss.weights[term] = 0.0
    config.train.learning_rate = 2e-3
    config.train.num_steps = 300
    config.train.log_every_steps = 25
    config.train.checkpoint_every_steps = 100
    config.train.eval_every_steps = 100
    return config
