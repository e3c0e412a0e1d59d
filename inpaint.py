"""Inpaint your photos: see `python inpaint.py --help` (same as `python -m pconv_jax.inference.inpaint`)."""

from pconv_jax.inference.inpaint import main

if __name__ == "__main__":
    main()
