"""Paint the holes in a browser: a local inpainting web app (gradio).

    python -m pconv_jax.inference.app --workdir workdirs/demo_train     # http://127.0.0.1:7860
    python -m pconv_jax.inference.app --workdir workdirs/demo_train \
        --workdir workdirs/demo_conv_train                               # a model selector

Upload a photo (or pick a bundled example), paint over what should go, press Inpaint, download
the PNG. The result has the photo's resolution and every pixel outside the holes is exactly the
photo's. Each `--workdir` adds its trained network to the method selector; PatchMatch and
OpenCV's Telea and Navier-Stokes inpainting are always offered. A workdir without a checkpoint
stops the start.

The methods come from the registry (`methods`) and fill photos as `inpaint.py` does
(`fill.fill_photo`): a network works around the holes at the side it was trained at, crops
larger than that are filled from downscaled copies, and only the hole pixels are pasted into
the full-resolution photo; the classical methods fill photos up to `--max_side` whole. Sizes are
bucketed (`model_inpainter.bucket_side`): a photo or crop is mirror-padded up to one of a few
sides, so a second one of a similar size reuses the compiled network instead of compiling anew.

The server binds 127.0.0.1 unless `--host` says otherwise and never makes a public link. It
serves the requests that decode or fill pixels (upload, example, Inpaint) one at a time, whichever
client sent them, fills a photo in at most `fill.MAX_CROPS` crops, deletes the files it made for the
page an hour or two after it made them, and shows no server path in the page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from pconv_jax import config as config_lib
from pconv_jax.cli import USER_ERRORS
from pconv_jax.data import images, sources
from pconv_jax.inference import fill, methods, model_inpainter

# The editor gets a copy no larger than this (painting does not need more); the mask painted on
# it is scaled back to the photo nearest-neighbour.
DISPLAY_MAX_SIDE = 2048
KEPT_RESULTS = 2  # result PNGs kept in the output folder
# Files gradio keeps for the page (uploads, shown images, results) are deleted this long after
# they were made, checked as often.
FILE_LIFETIME_S = 3600
EXAMPLES = ("coffee", "chelsea", "astronaut", "rocket", "flower.jpg")


class InputError(ValueError):
    """Bad input from the page: its message is shown there."""


# An absolute path's folders (POSIX or Windows, separators doubled in a repr), not those of a URL
# or a relative path.
_FOLDERS = re.compile(r"(?<![\w:./\\])(?:[A-Za-z]:)?[\\/]+(?:[^\s'\"\\/]+[\\/]+)+")


def page_error(err: BaseException) -> str:
    """The status line for an error: its message with every absolute path cut to its file name
    (the server's folders, its temporary ones above all, are not the page's business)."""
    return f"**Error:** {_FOLDERS.sub('', str(err))}"


# ----------------------------------------------------------------------------- methods

Method = methods.Method
fill_photo = fill.fill_photo  # the composite of a photo of any size, crop by crop
inpaint_photo = fill.inpaint_photo  # the same on uint8 photos


def classical_methods() -> list[Method]:
    """The methods built from settings alone (PatchMatch, OpenCV's two), always offered."""
    return [methods.build(name) for name in methods.SETTINGS_ONLY]


def workdir_label(workdir: str, partial: bool, unique_names: bool) -> str:
    name = os.path.basename(os.path.normpath(workdir)) if unique_names else workdir
    return f"{name} ({'partial' if partial else 'ordinary'} convolutions)"


def load_methods(workdirs: Sequence[str]) -> list[Method]:
    """The networks of `workdirs` (their latest checkpoints), then the classical methods.

    Raises FileNotFoundError naming a workdir without config.json or checkpoints.
    """
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    unique = len(set(names)) == len(names)
    loaded = []
    from pconv_jax.training import checkpoints
    for workdir in workdirs:
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"workdir {workdir!r} does not exist")
        if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
            raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints/ folder: train a "
                                    f"model there first, or pass another --workdir")
        config = config_lib.load_workdir_config(workdir)
        # The network pads to the buckets itself, so that it counts only the photo's pixels.
        method = methods.build("model", config=config, workdir=workdir,
                               pad_side=model_inpainter.bucket_side)
        method.label = workdir_label(workdir, bool(config.model.get("partial", True)), unique)
        loaded.append(method)
    return loaded + classical_methods()


# ----------------------------------------------------------------------------- page input

def decode_photo(path: str | None, max_pixels: int | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) of an uploaded file; InputError when it is not a usable image.

    `max_pixels` defaults to `images.pixel_limit()`; the reader checks it from the file's header,
    before decoding (a small file can hold a huge image)."""
    if not path:
        raise InputError("upload a photo or pick an example first")
    name = os.path.basename(path)
    if os.path.getsize(path) == 0:
        raise InputError(f"{name!r} is empty: upload a PNG, JPEG, WebP, BMP or TIFF image")
    try:
        return images.read_image(path, max_pixels=max_pixels)
    except images.ImageTooLargeError as error:
        raise InputError(page_error(error)) from error
    except (OSError, ValueError) as error:
        raise InputError(f"{name!r} is not an image this app can read ({page_error(error)}): "
                         f"upload a PNG, JPEG, WebP, BMP or TIFF image") from error


def painted_holes(editor_value: Mapping | None, size: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) of the pixels painted in the editor's layers, at `size` (nearest).

    A layer pixel counts as painted where its alpha is non-zero (RGBA layers) or, for layers
    without alpha, where it is not black. Erased pixels are transparent again.
    """
    painted = np.zeros(size, bool)
    for layer in (editor_value or {}).get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 2:
            ink = layer > 0
        elif layer.shape[-1] in (2, 4):
            ink = layer[..., -1] > 0
        else:
            ink = layer.max(axis=-1) > 0
        if ink.shape != size:
            ink = cv2.resize(ink.astype(np.uint8), (size[1], size[0]),
                             interpolation=cv2.INTER_NEAREST) > 0
        painted |= ink
    return painted


def mask_file_holes(path: str, size: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) holes of an uploaded mask file (white = hole); it must have the photo's size."""
    name = os.path.basename(path)
    try:
        holes = images.read_hole_map(path, "white")
    except (OSError, ValueError) as error:
        raise InputError(f"mask {name!r} is not an image ({error}): upload a PNG with white "
                         f"holes") from error
    if holes.shape != tuple(size):
        raise InputError(f"mask {name!r} is {holes.shape[1]}x{holes.shape[0]} but the photo is "
                         f"{size[1]}x{size[0]}: the mask must have the photo's size")
    return holes


def valid_mask(editor_value: Mapping | None, mask_path: str | None,
               size: tuple[int, int]) -> np.ndarray:
    """(H, W, 1) float32, 1 = valid, 0 = hole: painted pixels and mask-file holes together."""
    holes = painted_holes(editor_value, size)
    if mask_path:
        holes |= mask_file_holes(mask_path, size)
    if not holes.any():
        raise InputError("nothing to fill: paint over what should go (or upload a mask file, "
                         "white = hole), then press Inpaint")
    return (~holes).astype(np.float32)[..., None]


def respond(method: Method, photo: np.ndarray, stem: str, editor_value: Mapping | None,
            mask_path: str | None, *, max_side: int, output_dir: str) -> tuple[str, str]:
    """What Inpaint does: (path of the result PNG, status line with the time taken)."""
    start = time.perf_counter()
    valid = valid_mask(editor_value, mask_path, photo.shape[:2])
    path = write_png(output_dir, stem, inpaint_photo(method, photo, valid, max_side))
    seconds = time.perf_counter() - start
    h, w = photo.shape[:2]
    return path, (f"Filled {1 - float(valid.mean()):.1%} of {w}x{h} with {method.label} in "
                  f"{seconds:.2f} s. Download gives the full-resolution PNG.")


def write_png(directory: str, stem: str, image: np.ndarray) -> str:
    """Writes uint8 RGB `image` as `<directory>/<n>/<stem>_inpainted.png` (a fresh folder each)
    and deletes the folders of all but the KEPT_RESULTS newest results (gradio serves its own
    copy of each, made before the next request runs)."""
    folder = tempfile.mkdtemp(dir=directory)
    path = os.path.join(folder, f"{stem}_inpainted.png")
    images.write_image(path, image)
    folders = sorted((entry for entry in os.scandir(directory) if entry.is_dir()),
                     key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
    for old in folders[KEPT_RESULTS:]:
        if old.path != folder:
            shutil.rmtree(old.path, ignore_errors=True)
    return path


def display_copy(photo: np.ndarray) -> np.ndarray:
    """The photo for the editor: scaled down to DISPLAY_MAX_SIDE when larger."""
    h, w = photo.shape[:2]
    if max(h, w) <= DISPLAY_MAX_SIDE:
        return photo
    scale = DISPLAY_MAX_SIDE / max(h, w)
    return cv2.resize(photo, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def example_photo(name: str) -> np.ndarray:
    """A bundled demo photograph (uint8 RGB)."""
    split = "heldout" if name in sources.DEMO_HELDOUT else "train"
    source = sources.demo_source(split)
    return source.load(source.names.index(name))


# ----------------------------------------------------------------------------- the page

def build_app(methods: Sequence[Method], *, max_side: int = 1024, max_upload_mb: float = 50,
              output_dir: str | None = None, brush_size: int | str = "auto",
              file_lifetime_s: int = FILE_LIFETIME_S):
    """The gradio Blocks of the app (not launched); `brush_size`: the initial brush radius;
    files made for the page are deleted `file_lifetime_s` to twice that after they were made."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    by_label = {m.label: m for m in methods}
    output_dir = output_dir or tempfile.mkdtemp(prefix="pconv_app_")
    os.makedirs(output_dir, exist_ok=True)
    max_bytes = int(max_upload_mb * 1024 * 1024)

    # Photo events update: the stored photo, the editor, the result, the download button, the
    # status line, the upload box (emptied, so that the next photo can be dropped there) and
    # the example choice (cleared when a photo is uploaded).
    unchanged = (gr.update(),) * 5 + (None, gr.update())

    def show_photo(photo: np.ndarray, name: str, example_choice=None):
        editor = {"background": display_copy(photo), "layers": [], "composite": None}
        h, w = photo.shape[:2]
        status = f"{name}: {w}x{h}. Paint over what should go, then press Inpaint."
        return ((photo, name), editor, None, gr.update(value=None, interactive=False), status,
                None, example_choice)

    def failed(err: BaseException):
        return unchanged[:4] + (page_error(err),) + unchanged[5:]

    def on_upload(path):
        if not path:
            return unchanged
        try:
            if os.path.getsize(path) > max_bytes:
                raise InputError(f"{os.path.basename(path)!r} is larger than the upload limit "
                                 f"of {max_upload_mb:g} MB")
            photo = decode_photo(path)
        except USER_ERRORS as err:
            return failed(err)
        return show_photo(photo, os.path.splitext(os.path.basename(path))[0])

    def on_example(name):
        if not name:
            return unchanged
        return show_photo(example_photo(name), os.path.splitext(name)[0], gr.update())

    def on_inpaint(original, editor_value, mask_path, label):
        try:
            if original is None:
                raise InputError("upload a photo or pick an example first")
            if mask_path and os.path.getsize(mask_path) > max_bytes:
                raise InputError(f"the mask file is larger than the upload limit of "
                                 f"{max_upload_mb:g} MB")
            path, status = respond(by_label[label], *original, editor_value, mask_path,
                                   max_side=max_side, output_dir=output_dir)
        except USER_ERRORS as err:  # bad input, a full disk: said in the page, the app goes on
            return gr.update(), gr.update(), page_error(err)
        return path, gr.update(value=path, interactive=True), status

    with gr.Blocks(title="pconv_jax inpainting",
                   delete_cache=(file_lifetime_s, file_lifetime_s)) as demo:
        gr.Markdown("## Inpainting with partial convolutions\nUpload a photo or pick an example, "
                    "paint over what should go, press **Inpaint**.")
        original = gr.State(None)
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    photo_file = gr.File(label="Photo", type="filepath", elem_id="photo",
                                         height=140)
                    example = gr.Dropdown(list(EXAMPLES), value=None, label="Or an example",
                                          elem_id="example")
                editor = gr.ImageEditor(
                    label="Paint the holes", elem_id="editor", type="numpy", image_mode="RGBA",
                    sources=(), transforms=(), layers=False, format="png", height=520,
                    brush=gr.Brush(default_size=brush_size, colors=["#ff00ff"],
                                   color_mode="fixed"),
                    eraser=gr.Eraser(default_size=brush_size))
                mask_file = gr.File(label="Mask file (optional, white = hole)", type="filepath",
                                    elem_id="mask_file", height=130)
            with gr.Column():
                with gr.Row():
                    method = gr.Dropdown([m.label for m in methods], value=methods[0].label,
                                         label="Method", elem_id="method", scale=2)
                    run = gr.Button("Inpaint", variant="primary", elem_id="inpaint", scale=1)
                result = gr.Image(label="Result", type="filepath", format="png",
                                  interactive=False, elem_id="result", height=520,
                                  buttons=["download", "fullscreen"])
                download = gr.DownloadButton("Download PNG", interactive=False,
                                             elem_id="download")
                status = gr.Markdown("Upload a photo or pick an example.", elem_id="status")

        photo_outputs = [original, editor, result, download, status, photo_file, example]
        # Every event that decodes or fills pixels waits for the one before, whichever client
        # sent it: one photo's memory and one network or PatchMatch run at a time.
        one_at_a_time = {"concurrency_id": "pixels", "concurrency_limit": 1}
        photo_file.upload(on_upload, photo_file, photo_outputs, **one_at_a_time)
        example.input(on_example, example, photo_outputs, **one_at_a_time)
        run.click(on_inpaint, [original, editor, mask_file, method], [result, download, status],
                  **one_at_a_time)
    return demo


def launch(demo, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 50):
    """Starts serving the app in the background (never a public share link); returns once it
    serves. OSError naming `--port` when (host, port) cannot be bound.

    An unexpected error is "Error" in the page, its message and traceback only in the server's
    log (it could name server paths); errors a user can cause are said in the status line.
    """
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                    max_file_size=f"{int(max_upload_mb * 1024)}kb", prevent_thread_lock=True,
                    show_error=False, quiet=True)
    except OSError:  # gradio's message advises its own settings, not this command's flags
        raise OSError(f"cannot serve on {host}:{port} ({bind_problem(host, port)}): pass a free "
                      f"--port (or another --host)") from None


def bind_problem(host: str, port: int) -> str:
    """Why (host, port) cannot be bound, in the system's words."""
    try:
        family = socket.getaddrinfo(host, port)[0][0]
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as err:
        return err.strerror or str(err)
    return "the server did not start"


# ----------------------------------------------------------------------------- command

def main(argv: Sequence[str]) -> None:
    from absl import app, flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = flags.FLAGS
    if options.max_side < 64:
        raise ValueError(f"--max_side must be at least 64, got {options.max_side}")
    if importlib.util.find_spec("gradio") is None:
        raise app.UsageError("the app needs gradio: pip install -e '.[app]'")
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests
    methods = load_methods(options.workdir)  # before serving: a bad workdir stops the start
    demo = build_app(methods, max_side=options.max_side, max_upload_mb=options.max_upload_mb)
    launch(demo, host=options.host, port=options.port, max_upload_mb=options.max_upload_mb)
    print(f"serving on http://{options.host}:{options.port} (Ctrl+C stops)", flush=True)
    demo.block_thread()


def define_flags() -> None:
    """The command's flags (defined only when it runs: other commands share names)."""
    from absl import flags
    flags.DEFINE_multi_string("workdir", [], "a training workdir (config.json, checkpoints); "
                              "repeat for a model selector")
    flags.DEFINE_string("host", "127.0.0.1", "address to bind (0.0.0.0 = every interface)")
    flags.DEFINE_integer("port", 7860, "port to serve on")
    flags.DEFINE_integer("max_side", 1024, "photos with a longer side are filled crop by crop "
                         "around the holes")
    flags.DEFINE_float("max_upload_mb", 50, "largest photo or mask file accepted, in MB")
    # `--help` lists the main script's flags: make these its own when started as `app.py`.
    for name in ("workdir", "host", "port", "max_side", "max_upload_mb", "debug"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def run() -> None:
    """The command: absl flags, then `cli.run(main)`."""
    from pconv_jax import cli  # defines --debug
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
