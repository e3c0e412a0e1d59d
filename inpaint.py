"""Inpaint your photos: `python inpaint.py --help` (= `python -m pconv_jax.inference.inpaint`)."""

from pconv_jax import cli
from pconv_jax.inference import inpaint

if __name__ == "__main__":
    __doc__ = inpaint.__doc__  # --help shows the command's documentation
    inpaint.define_flags()
    cli.run(inpaint.main)
