"""Paint the holes in a browser: a local inpainting web app (FastAPI, one canvas page).

    python -m pconv_jax.inference.app --workdir workdirs/demo_train     # http://127.0.0.1:7860
    python -m pconv_jax.inference.app --workdir workdirs/demo_train \
        --workdir workdirs/demo_conv_train                               # a model selector

Upload a photo (or pick a bundled example), paint over what should go, press Inpaint (or let
each stroke fill when it ends): the fill becomes the canvas, so edits stack; undo and redo cover
strokes and fills; Download gives the current state at full resolution, every pixel outside the
filled strokes exactly the photo's. Each `--workdir` adds its trained network to the method
selector; PatchMatch and OpenCV's Telea and Navier-Stokes inpainting are always offered. A
workdir without a checkpoint stops the start.

The page (`editor/`: HTML, JS, CSS) sends the photo once per upload and, per Inpaint, only a PNG
of the strokes with the number of the state they were painted on; the server keeps each page's
photo and its fills (`Document`, under an unguessable id) and answers with the filled box's
pixels.

The methods come from the registry (`methods`) and fill photos as `inpaint.py` does
(`fill.fill_photo`): a network works around the holes at the side it was trained at, crops
larger than that are filled from downscaled copies, and only the hole pixels are pasted into
the full-resolution photo; the classical methods fill photos up to `--max_side` whole. Sizes are
bucketed (`model_inpainter.bucket_side`): a photo or crop is mirror-padded up to one of a few
sides, so a second one of a similar size reuses the compiled network instead of compiling anew.

The server binds 127.0.0.1 unless `--host` says otherwise. It serves the requests that decode,
fill or encode pixels one at a time, whichever page sent them, fills a photo in at most
`fill.MAX_CROPS` crops, writes no file that outlives a request, forgets a photo unused for an hour
(and the oldest beyond MAX_DOCUMENTS), and shows no server path in the page.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib import resources

import cv2
import numpy as np
import PIL.Image

from pconv_jax import config as config_lib
from pconv_jax.cli import USER_ERRORS
from pconv_jax.data import images, sources
from pconv_jax.inference import fill, methods, model_inpainter

# The editor gets a copy no larger than this (painting does not need more); the mask painted on
# it is scaled back to the photo nearest-neighbour.
DISPLAY_MAX_SIDE = 2048
# A page's photo and fills are forgotten this long after its last request; at most this many
# photos, holding at most this many bytes together, are kept (the least recently used go first,
# the newest always stays).
DOCUMENT_LIFETIME_S = 3600
MAX_DOCUMENTS = 16
MAX_DOCUMENT_BYTES = 2 * 1024**3
EXAMPLES = ("coffee", "chelsea", "astronaut", "rocket", "flower.jpg")


class InputError(ValueError):
    """Bad input from the page: its message is shown there."""


# An absolute path's folders (POSIX or Windows, separators doubled in a repr), not those of a URL
# or a relative path.
_FOLDERS = re.compile(r"(?<![\w:./\\])(?:[A-Za-z]:)?[\\/]+(?:[^\s'\"\\/]+[\\/]+)+")


def page_error(err: BaseException) -> str:
    """The status line for an error: its message with every absolute path cut to its file name
    (the server's folders, its temporary ones above all, are not the page's business)."""
    return f"Error: {without_paths(str(err))}"


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its file name."""
    return _FOLDERS.sub("", text)


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
        raise InputError(without_paths(str(error))) from error
    except (OSError, ValueError) as error:
        raise InputError(f"{name!r} is not an image this app can read "
                         f"({without_paths(str(error))}): upload a PNG, JPEG, WebP, BMP or TIFF "
                         f"image") from error


def has_transparency(path: str) -> bool:
    """Whether an image file has an alpha channel or a transparent colour (its header only)."""
    with PIL.Image.open(path) as image:
        return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def mask_holes(data: bytes, size: tuple[int, int], corner: tuple[int, int] = (0, 0)
               ) -> np.ndarray:
    """Bool (H, W) holes of the page's mask: a PNG of the strokes' box (non-black = hole) whose
    top left corner is `corner` (y, x) in the shown photo of `size` (H, W).

    The box's size is read from the PNG header, and checked, before decoding."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        raise InputError("the mask is not a PNG: reload the page")
    width, height = struct.unpack(">II", data[16:24])
    y, x = corner
    if not (0 <= y and 0 <= x and y + height <= size[0] and x + width <= size[1]):
        raise InputError(f"the mask ({width}x{height} at x={x}, y={y}) lies outside the photo "
                         f"shown at {size[1]}x{size[0]}: reload the page")
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError("the mask PNG does not decode: reload the page")
    holes = np.zeros(size, bool)
    holes[y:y + height, x:x + width] = mask > 0  # an anti-aliased stroke edge is painted too
    if not holes.any():
        raise InputError("nothing to fill: paint over what should go, then press Inpaint")
    return holes


def display_size(h: int, w: int) -> tuple[int, int]:
    """(H, W) the editor shows a photo at: at most DISPLAY_MAX_SIDE (painting needs no more)."""
    scale = min(1.0, DISPLAY_MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def display_copy(photo: np.ndarray) -> np.ndarray:
    """The photo for the editor: scaled down to DISPLAY_MAX_SIDE when larger."""
    h, w = display_size(*photo.shape[:2])
    if (h, w) == photo.shape[:2]:
        return photo
    return cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)


def example_photo(name: str) -> np.ndarray:
    """A bundled demo photograph (uint8 RGB)."""
    split = "heldout" if name in sources.DEMO_HELDOUT else "train"
    source = sources.demo_source(split)
    return source.load(source.names.index(name))


# ----------------------------------------------------------------------------- documents

Box = tuple[int, int, int, int]  # y0, x0, y1, x1


@dataclasses.dataclass
class Document:
    """One uploaded photo and the fills made on it: what one page edits.

    `pixels` is the photo after the first `version` fills; each fill keeps the pixels of its
    box before and after, so undo and redo move `version` without a copy of the photo each."""
    name: str
    pixels: np.ndarray  # uint8 (H, W, 3)
    gray: bool          # every pixel gray: fills are made gray too
    fills: list[tuple[Box, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    version: int = 0
    used: float = dataclasses.field(default_factory=time.monotonic)

    def __post_init__(self):
        self.pixels = np.require(self.pixels, np.uint8, ["C", "W"])  # a decoder's may be frozen

    @property
    def display_shape(self) -> tuple[int, int]:
        return display_size(*self.pixels.shape[:2])

    def goto(self, version: int) -> None:
        """Makes `pixels` the state after `version` fills."""
        if not 0 <= version <= len(self.fills):
            raise InputError("the editor and the server disagree about the fills made: reload "
                             "the page")
        while self.version > version:
            self.version -= 1
            (y0, x0, y1, x1), before, _ = self.fills[self.version]
            self.pixels[y0:y1, x0:x1] = before
        while self.version < version:
            (y0, x0, y1, x1), _, after = self.fills[self.version]
            self.pixels[y0:y1, x0:x1] = after
            self.version += 1

    def add_fill(self, result: np.ndarray, box: Box) -> None:
        """Makes `result` (the current pixels, changed inside `box` only) the next version; the
        fills after the current version (undone ones) go."""
        y0, x0, y1, x1 = box
        del self.fills[self.version:]
        self.fills.append((box, self.pixels[y0:y1, x0:x1].copy(), result[y0:y1, x0:x1].copy()))
        self.goto(self.version + 1)

    def display_patch(self, box: Box) -> tuple[Box, np.ndarray]:
        """The editor's pixels of the current state around a photo box: (the box in display
        pixels, its pixels)."""
        h, w = self.pixels.shape[:2]
        dh, dw = self.display_shape
        sy, sx = dh / h, dw / w
        y0, x0, y1, x1 = box
        d = (int(y0 * sy), int(x0 * sx), min(dh, math.ceil(y1 * sy)), min(dw, math.ceil(x1 * sx)))
        if (dh, dw) == (h, w):
            return d, self.pixels[d[0]:d[2], d[1]:d[3]]
        region = self.pixels[int(d[0] / sy):min(h, math.ceil(d[2] / sy)),
                             int(d[1] / sx):min(w, math.ceil(d[3] / sx))]
        return d, cv2.resize(region, (d[3] - d[1], d[2] - d[0]), interpolation=cv2.INTER_AREA)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + sum(b.nbytes + a.nbytes for _, b, a in self.fills)

    def png(self) -> bytes:
        """The current state as a full-resolution PNG (one channel for a gray photo)."""
        return images.encode_image(self.pixels[..., 0] if self.gray else self.pixels)


class Documents:
    """The pages' documents by unguessable id. One unused for `lifetime_s` goes, and the least
    recently used go beyond `limit` documents or `max_bytes` (each holds a photo in memory)."""

    def __init__(self, lifetime_s: float, limit: int, max_bytes: int = MAX_DOCUMENT_BYTES):
        self.lifetime_s, self.limit, self.max_bytes = lifetime_s, limit, max_bytes
        self._documents: collections.OrderedDict[str, Document] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, d in self._documents.items() if now - d.used > self.lifetime_s]:
            del self._documents[key]
        while len(self._documents) > 1 and (
                len(self._documents) > self.limit
                or sum(d.nbytes for d in self._documents.values()) > self.max_bytes):
            self._documents.popitem(last=False)

    def add(self, document: Document) -> str:
        key = secrets.token_urlsafe(24)
        with self._lock:
            self._documents[key] = document
            self._expire()
        return key

    def get(self, key: str) -> Document:
        with self._lock:
            self._expire()
            document = self._documents.get(key)
            if document is None:
                raise InputError("this photo is no longer on the server (unused for a while, or "
                                 "the server restarted): upload it again")
            self._documents.move_to_end(key)
            document.used = time.monotonic()
            return document

    def drop(self, key: str) -> None:
        with self._lock:
            self._documents.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._documents)


# ----------------------------------------------------------------------------- the page

def preselected(offered: Sequence[Method], toys: set[str]) -> str:
    """The method the page starts with: the first network that is not a toy, else PatchMatch."""
    classical = {m.label for m in classical_methods()}
    for method in offered:
        if method.label not in classical and method.label not in toys:
            return method.label
    labels = [m.label for m in offered]
    patchmatch = methods.REGISTRY["patchmatch"].title
    return patchmatch if patchmatch in labels else labels[0]


def build_app(methods: Sequence[Method], *, max_side: int = 1024, max_upload_mb: float = 50,
              brush_size: int | None = None, toys: Sequence[str] = (),
              document_lifetime_s: float = DOCUMENT_LIFETIME_S,
              max_documents: int = MAX_DOCUMENTS):
    """The app (a FastAPI application, not served): the editor page and its JSON/PNG endpoints.

    `brush_size`: the brush's initial diameter in shown pixels (default: from the photo's
    size); `toys`: labels of methods to mark as toys in the page (as are methods whose `toy`
    attribute is true)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    by_label = {m.label: m for m in methods}
    toys = {m.label for m in methods if m.label in toys or getattr(m, "toy", False)}
    documents = Documents(document_lifetime_s, max_documents)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    # Requests that decode, fill or encode pixels run one at a time, whichever page sent them:
    # one photo's memory and one network or PatchMatch run at a time.
    pixels_lock = threading.Lock()
    config = {"methods": [{"label": m.label, "toy": m.label in toys} for m in methods],
              "selected": preselected(methods, toys), "examples": list(EXAMPLES),
              "brush": brush_size, "maxUploadMb": max_upload_mb}
    page = (resources.files(__package__) / "editor" / "index.html").read_text()
    page = page.replace("{{config}}", json.dumps(config).replace("<", "\\u003c"))
    assets = {name: (resources.files(__package__) / "editor" / name).read_text()
              for name in ("editor.js", "editor.css")}

    api = FastAPI(title="pconv_jax inpainting", docs_url=None, redoc_url=None,
                  openapi_url=None)

    def error(err: BaseException, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": page_error(err)}, status_code=status)

    @api.exception_handler(Exception)
    async def unexpected(request, err):  # its message could name server paths: the log only
        logging.getLogger(__name__).error("%s failed", request.url.path, exc_info=err)
        return JSONResponse({"error": "Error: the server failed on this request (its log says "
                                      "why); try again, or reload the page"}, status_code=500)

    async def body_of(request, what: str) -> bytes:
        """The request's body, refused above the upload limit before it is all read."""
        too_large = InputError(f"{what} is larger than the upload limit of {max_upload_mb:g} MB: "
                               f"upload a smaller file (or start the app with a larger "
                               f"--max_upload_mb)")
        if int(request.headers.get("content-length") or 0) > max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def opened(document: Document, note: str = "") -> dict:
        h, w = document.pixels.shape[:2]
        dh, dw = document.display_shape
        return {"document": documents.add(document), "name": document.name,
                "width": w, "height": h, "displayWidth": dw, "displayHeight": dh,
                "gray": document.gray,
                "message": f"{document.name}: {w}x{h}.{note} Paint over what should go, then "
                           f"press Inpaint."}

    def open_photo(data: bytes, filename: str) -> dict:
        name = os.path.basename(filename) or "photo"
        with pixels_lock, tempfile.TemporaryDirectory(prefix="pconv_app_") as folder:
            # The upload's name (the reader's messages name it), made a plain file name.
            safe = re.sub(r"[^\w.-]", "_", name)[-100:].lstrip(".") or "photo"
            path = os.path.join(folder, safe)
            with open(path, "wb") as f:
                f.write(data)
            photo = decode_photo(path)
            try:
                alpha = has_transparency(path)
            except (OSError, ValueError):
                alpha = False
        note = (" Its transparency is dropped: fills and the download are opaque."
                if alpha else "")
        stem = os.path.splitext(name)[0]
        return opened(Document(stem, photo, is_gray(photo)), note)

    @api.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @api.get("/editor.js")
    def script():
        return Response(assets["editor.js"], media_type="text/javascript",
                        headers={"Cache-Control": "no-cache"})

    @api.get("/editor.css")
    def style():
        return Response(assets["editor.css"], media_type="text/css",
                        headers={"Cache-Control": "no-cache"})

    # The two endpoints that read a body are plain Starlette ones: FastAPI would read a
    # `Request` annotation as a query parameter here (annotations are strings in this module).
    async def upload(request):
        name = request.query_params.get("name") or "photo"
        try:
            data = await body_of(request, repr(os.path.basename(name)))
            return JSONResponse(await run_in_threadpool(open_photo, data, name))
        except USER_ERRORS as err:
            return error(err)
    api.router.add_route("/api/photo", upload, methods=["POST"])

    @api.post("/api/example")
    def example(name: str):
        try:
            if name not in EXAMPLES:
                raise InputError(f"there is no example {name!r}: pick one of the list")
            with pixels_lock:
                photo = example_photo(name)
            return opened(Document(os.path.splitext(name)[0], photo, False))
        except USER_ERRORS as err:
            return error(err)

    @api.get("/api/photo/{key}")
    def shown(key: str):
        """The photo as uploaded, at the editor's size (PNG)."""
        try:
            document = documents.get(key)
            with pixels_lock:
                document.goto(0)
                return Response(images.encode_image(display_copy(document.pixels)),
                                media_type="image/png")
        except USER_ERRORS as err:
            return error(err)

    @api.delete("/api/photo/{key}")
    def forget(key: str):
        documents.drop(key)
        return {"ok": True}

    def fill(key: str, version: int, label: str, mask: bytes, corner: tuple[int, int]) -> dict:
        start = time.perf_counter()
        document = documents.get(key)
        if label not in by_label:
            raise InputError(f"there is no method {label!r}: reload the page")
        method = by_label[label]
        with pixels_lock:
            document.goto(version)
            h, w = document.pixels.shape[:2]
            holes = images.resize_nearest(mask_holes(mask, document.display_shape, corner),
                                          (h, w))
            valid = (~holes).astype(np.float32)[..., None]
            result = inpaint_photo(method, document.pixels, valid, max_side)
            if document.gray:  # a gray photo gets a gray fill
                result[holes] = np.round(result[holes].mean(axis=-1, keepdims=True))
            ys, xs = np.nonzero(holes.any(axis=1))[0], np.nonzero(holes.any(axis=0))[0]
            box = (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)
            document.add_fill(result, box)
            (y0, x0, y1, x1), patch = document.display_patch(box)
            encoded = base64.b64encode(images.encode_image(patch)).decode("ascii")
        seconds = time.perf_counter() - start
        return {"version": document.version, "box": [x0, y0, x1 - x0, y1 - y0],
                "patch": encoded, "serverSeconds": round(seconds, 4),
                "message": f"Filled {holes.mean():.1%} of {w}x{h} with {label}: {seconds:.2f} s "
                           f"on the server"}

    async def inpaint_request(request):
        try:
            query = request.query_params
            numbers = [query.get("version", ""), query.get("y", "0"), query.get("x", "0")]
            if not all(n.isdigit() for n in numbers) or "method" not in query:
                raise InputError("the request names no state or method: reload the page")
            version, y, x = (int(n) for n in numbers)
            mask = await body_of(request, "the mask")
            return JSONResponse(await run_in_threadpool(
                fill, request.path_params["key"], version, query["method"], mask, (y, x)))
        except USER_ERRORS as err:
            return error(err)
    api.router.add_route("/api/inpaint/{key}", inpaint_request, methods=["POST"])

    @api.get("/api/download/{key}")
    def download(key: str, version: int):
        """The state after `version` fills at full resolution (PNG)."""
        try:
            document = documents.get(key)
            with pixels_lock:
                document.goto(version)
                data = document.png()
        except USER_ERRORS as err:
            return error(err)
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", document.name)[:80] or "photo"
        suffix = "_inpainted" if version else ""
        return Response(data, media_type="image/png", headers={
            "Content-Disposition": f'attachment; filename="{stem}{suffix}.png"'})

    api.state.documents = documents  # for tests and benchmarks
    return api


def is_gray(photo: np.ndarray) -> bool:
    """Whether every pixel of a uint8 RGB photo is gray (its three channels equal)."""
    return bool((photo[..., 0] == photo[..., 1]).all() and (photo[..., 1] == photo[..., 2]).all())


class Server:
    """The app served by uvicorn in a background thread, on a socket bound before it starts
    (so that a busy port is an error here, not a log line there)."""

    def __init__(self, api, host: str, port: int):
        import uvicorn
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self.socket = socket.socket(family, socket.SOCK_STREAM)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
        except OSError as err:
            raise OSError(f"cannot serve on {host}:{port} ({err.strerror or err}): pass a free "
                          f"--port (or another --host)") from None
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(api, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, args=([self.socket],),
                                        daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the server on {host}:{port} did not start (its log says why)")
            time.sleep(0.02)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self.socket.close()

    def wait(self) -> None:
        """Serves until Ctrl+C."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.close()


def launch(api, *, host: str = "127.0.0.1", port: int = 7860) -> Server:
    """Starts serving the app in the background; returns once it serves. OSError naming `--port`
    when (host, port) cannot be bound. Never a public link: it serves `host` only."""
    return Server(api, host, port)


# ----------------------------------------------------------------------------- command

def main(argv: Sequence[str]) -> None:
    from absl import app, flags
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = flags.FLAGS
    if options.max_side < 64:
        raise ValueError(f"--max_side must be at least 64, got {options.max_side}")
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        raise app.UsageError("the app needs fastapi and uvicorn: pip install -e '.[app]'")
    methods = load_methods(options.workdir)  # before serving: a bad workdir stops the start
    api = build_app(methods, max_side=options.max_side, max_upload_mb=options.max_upload_mb)
    server = launch(api, host=options.host, port=options.port)
    print(f"serving on http://{options.host}:{options.port} (Ctrl+C stops)", flush=True)
    server.wait()


def define_flags() -> None:
    """The command's flags (defined only when it runs: other commands share names)."""
    from absl import flags
    flags.DEFINE_multi_string("workdir", [], "a training workdir (config.json, checkpoints); "
                              "repeat for a model selector")
    flags.DEFINE_string("host", "127.0.0.1", "address to bind (0.0.0.0 = every interface)")
    flags.DEFINE_integer("port", 7860, "port to serve on")
    flags.DEFINE_integer("max_side", 1024, "photos with a longer side are filled crop by crop "
                         "around the holes")
    flags.DEFINE_float("max_upload_mb", 50, "largest photo accepted, in MB")
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
