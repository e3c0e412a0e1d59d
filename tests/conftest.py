"""Test setup: 8 simulated CPU devices, set before JAX is first imported; shared compilations."""
import json
import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must not grab GPUs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def compiled_steps():
    """`get(config)`: the optimizer and jitted steps for a config (`make_steps`), built once per
    network, loss weights and optimizer settings, so that tests training the same tiny network
    compile its steps once per session."""
    from pconv_jax.training.step import make_steps, network_graphdef
    cache = {}

    def get(config):
        train = config.train
        schedule = [train[k] for k in ("learning_rate", "lr_schedule", "warmup_steps",
                                         "lr_decay_steps", "lr_step_every", "lr_step_factor")]
        if train.lr_schedule == "cosine" and not train.lr_decay_steps:
            schedule.append(train.num_steps)  # the cosine ends at num_steps
        key = json.dumps([config.model.to_dict(), config.loss.weights.to_dict(),
                          [config.loss.dtype, config.loss.remat], schedule,
                          [train.adam_b1, train.adam_b2, train.freeze_encoder_bn,
                           train.grad_clip_norm, train.accumulation_steps]], sort_keys=True)
        if key not in cache:
            cache[key] = make_steps(config, network_graphdef(config))
        return cache[key]

    return get
