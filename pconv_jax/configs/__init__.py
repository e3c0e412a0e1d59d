"""The default config, inside the package so that an installed copy has it.

`default.py` lists every setting with its default; the experiment files (the checkout's
`configs/*.py`, or your own) start from it: `from pconv_jax.configs import default`.
"""
