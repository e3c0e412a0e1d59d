"""The inpainting web app: see `python app.py --help` (same as `python -m pconv_jax.inference.app`)."""

from pconv_jax.inference.app import run

if __name__ == "__main__":
    run()
