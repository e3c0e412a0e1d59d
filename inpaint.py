"""Inpaint your photos: see `python inpaint.py --help` (same as `python -m pconv_jax.inpaint`)."""

from pconv_jax.inpaint import main

if __name__ == "__main__":
    main()
