"""The inpainting web app: `python app.py --help` (= `python -m pconv_jax.inference.app`)."""

from pconv_jax.inference.app import run

if __name__ == "__main__":
    run()
