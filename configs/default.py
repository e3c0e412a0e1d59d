"""Every setting and its default: `pconv_jax/configs/default.py`, inside the package.

Kept here so that `--config configs/default.py` (the paper's 256x256 network) still works.
"""

from pconv_jax.configs.default import get_config, set_stage  # noqa: F401
