"""The inpainting web app: mask extraction, bucketing, the large-photo path, and the page itself
driven in headless Chromium (upload, paint with the mouse, Inpaint, download)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import PIL.Image
import pytest

from pconv_jax.inference import app, methods
from tests.helpers import REPO
from tests.helpers.training import demo_config

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if os.path.exists("/usr/bin/chromium") else None)
ROOT = str(REPO)
EXTRAS = all(importlib.util.find_spec(m) for m in ("gradio", "playwright"))
BRUSH = 6  # brush radius in the tests' app, in photo pixels


def _fake_method(seen: list[tuple[int, ...]]):
    """A method that records the shapes it is given and fills holes with a gradient."""
    def fill(images, masks):
        seen.append(images.shape)
        ramp = np.linspace(0.2, 0.8, images.shape[2], dtype=np.float32)[None, None, :, None]
        return np.where(masks > 0.5, images, ramp)
    return methods.Method("fake", "fake", fill)


# ----------------------------------------------------------------------------- no browser

def test_painted_layer_becomes_a_valid_mask():
    layer = np.zeros((20, 30, 4), np.uint8)
    layer[5:8, 10:20] = (255, 0, 255, 255)   # a stroke
    layer[12, 3] = (255, 0, 255, 40)         # a faint anti-aliased edge still counts
    erased = np.zeros((20, 30, 4), np.uint8)  # an erased layer is transparent: no hole
    erased[..., :3] = 255
    value = {"background": np.zeros((20, 30, 4), np.uint8), "layers": [layer, erased],
             "composite": None}
    valid = app.valid_mask(value, None, (20, 30))
    assert valid.shape == (20, 30, 1) and valid.dtype == np.float32
    expected = np.ones((20, 30), np.float32)
    expected[5:8, 10:20] = 0
    expected[12, 3] = 0
    np.testing.assert_array_equal(valid[..., 0], expected)


def test_mask_painted_on_a_smaller_display_is_scaled_nearest():
    layer = np.zeros((10, 15, 4), np.uint8)
    layer[2:4, 5:10, 3] = 255
    holes = app.painted_holes({"layers": [layer]}, (20, 30))
    expected = np.zeros((20, 30), bool)
    expected[4:8, 10:20] = True
    np.testing.assert_array_equal(holes, expected)


def test_mask_file_adds_holes_and_bad_masks_are_page_errors(tmp_path):
    holes = np.zeros((20, 30), np.uint8)
    holes[1:3, 1:4] = 255  # white = hole
    cv2.imwrite(str(tmp_path / "mask.png"), holes)
    valid = app.valid_mask({"layers": []}, str(tmp_path / "mask.png"), (20, 30))
    assert valid[..., 0].sum() == 20 * 30 - 6 and (valid[1:3, 1:4] == 0).all()
    with pytest.raises(app.InputError, match=r"30x20 but the photo is 40x20"):
        app.valid_mask({"layers": []}, str(tmp_path / "mask.png"), (20, 40))
    with pytest.raises(app.InputError, match="nothing to fill"):
        app.valid_mask({"layers": [np.zeros((20, 30, 4), np.uint8)]}, None, (20, 30))
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(app.InputError, match="'notes.txt' is not an image"):
        app.decode_photo(str(tmp_path / "notes.txt"))
    with pytest.raises(app.InputError, match="above the limit"):
        cv2.imwrite(str(tmp_path / "big.png"), np.zeros((50, 50, 3), np.uint8))
        app.decode_photo(str(tmp_path / "big.png"), max_pixels=2000)


def test_uploads_obey_the_readers_pixel_limit_before_decoding(tmp_path, monkeypatch):
    """The app's limit is the reader's (`PCONV_MAX_PIXELS` raises it), checked from the header."""
    path = str(tmp_path / "photo.png")
    cv2.imwrite(path, np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setenv("PCONV_MAX_PIXELS", "1999")
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(app.InputError, match=r"'photo.png' is 50x40 pixels, above the limit"):
        app.decode_photo(path)
    monkeypatch.undo()
    monkeypatch.setenv("PCONV_MAX_PIXELS", "2000")
    assert app.decode_photo(path).shape == (40, 50, 3)


def test_workdir_without_checkpoint_stops_the_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        app.load_methods([str(tmp_path / "nothing_here")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(demo_config().to_json_best_effort())
    with pytest.raises(FileNotFoundError, match="'.*empty' has no checkpoints"):
        app.load_methods([str(tmp_path / "empty")])
    (tmp_path / "empty" / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        app.load_methods([str(tmp_path / "empty")])


def test_busy_port_is_one_error_line_naming_the_port_and_nothing_says_serving():
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is missing: pip install -e '.[app]'")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "serving on" not in done.stdout + done.stderr
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error:"), done.stdout + done.stderr
    assert f"127.0.0.1:{port}" in errors[0] and "--port" in errors[0], errors[0]
    assert "GRADIO_SERVER_PORT" not in errors[0] and "already in use" in errors[0], errors[0]


def test_page_errors_cut_paths_to_file_names():
    err = OSError(28, "No space left on device", "/tmp/pconv_app_1/tmpab/cat_inpainted.png")
    assert app.page_error(err) == ("**Error:** [Errno 28] No space left on device: "
                                   "'cat_inpainted.png'")
    err = OSError(2, "No such file", "C:\\Users\\me\\AppData\\Local\\Temp\\gradio\\cat.png")
    assert app.page_error(err) == "**Error:** [Errno 2] No such file: 'cat.png'"
    kept = "mask 'm.png' is 30x20 but the photo is 40x20; see http://host:7860/a and docs/app.md"
    assert app.page_error(app.InputError(kept)) == f"**Error:** {kept}"


# ----------------------------------------------------------------------------- over HTTP

class _Gate:
    """A method that waits at a gate: `started` once it runs, it fills when `opened` is set, or
    raises `error` when one is given."""

    def __init__(self):
        self.started, self.opened, self.error = threading.Event(), threading.Event(), None
        self.method = app.Method("gated", "gated", self._fill)

    def _fill(self, images, masks):
        self.started.set()
        assert self.opened.wait(300)
        if self.error:
            raise self.error
        return np.where(masks > 0.5, images, 0.5)


@pytest.fixture
def serve_gated(tmp_path):
    """Serves the app with one gated method on a free port: (its URL, the gate, the output
    folder) for a given lifetime of the page's files."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is missing: pip install -e '.[app]'")
    served = []

    def serve(file_lifetime_s: int = app.FILE_LIFETIME_S):
        gate, out, port = _Gate(), tmp_path / "out", _free_port()
        demo = app.build_app([gate.method], output_dir=str(out), file_lifetime_s=file_lifetime_s)
        app.launch(demo, port=port)
        served.append((demo, gate))
        return f"http://127.0.0.1:{port}", gate, out
    yield serve
    for demo, gate in served:
        gate.opened.set()
        demo.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photo_and_mask(tmp_path) -> tuple[str, str]:
    """A 60x40 photo file and a mask file (white = hole) for it."""
    photo = np.random.default_rng(3).integers(0, 256, (40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 15:30] = 255
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return str(tmp_path / "photo.png"), str(tmp_path / "mask.png")


def _client(url):
    """A client that leaves the files it is given on the server (the paths are the server's)."""
    from gradio_client import Client
    return Client(url, verbose=False, download_files=False)


def test_an_upload_waits_while_another_clients_inpaint_runs(serve_gated, tmp_path):
    from gradio_client import handle_file
    url, gate, _ = serve_gated()
    photo, mask = _photo_and_mask(tmp_path)
    first = _client(url)
    first.predict(handle_file(photo), api_name="/on_upload")
    inpaint = first.submit(None, handle_file(mask), "gated", api_name="/on_inpaint")
    assert gate.started.wait(300)
    upload = _client(url).submit(handle_file(photo), api_name="/on_upload")
    time.sleep(3)  # ample for a 60x40 upload, were it served beside the Inpaint
    assert not upload.done(), upload.status()
    gate.opened.set()
    assert "Filled" in inpaint.result(timeout=300)[2]
    assert "60x40" in upload.result(timeout=300)[3]


def test_errors_in_the_page_name_no_server_path(serve_gated, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    url, gate, out = serve_gated()
    photo, mask = _photo_and_mask(tmp_path)
    (tmp_path / "notes.txt").write_text("not pixels")
    client = _client(url)
    status = client.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/on_upload")[3]
    assert "'notes.txt' is not an image" in status and "/" not in status, status
    client.predict(handle_file(photo), api_name="/on_upload")
    gate.opened.set()
    shutil.rmtree(out)
    out.write_text("a file where the results folder was: writing a result fails")
    status = client.predict(None, handle_file(mask), "gated", api_name="/on_inpaint")[2]
    assert "Error" in status and "Not a directory" in status and "/" not in status, status
    gate.error = RuntimeError(f"a bug, in {tmp_path}")  # not a user's error: no message at all
    with pytest.raises(AppError) as raised:
        client.predict(None, handle_file(mask), "gated", api_name="/on_inpaint")
    assert str(tmp_path) not in str(raised.value), raised.value


def test_results_and_shown_photos_are_deleted_after_their_lifetime(serve_gated, tmp_path):
    from gradio_client import handle_file
    url, gate, out = serve_gated(file_lifetime_s=5)
    photo, _ = _photo_and_mask(tmp_path)
    gate.opened.set()
    client = _client(url)
    shown = client.predict(handle_file(photo), api_name="/on_upload")[0]["background"]["path"]
    assert os.path.isfile(shown)  # on this machine: the server is local
    served = [shown]
    for i in range(app.KEPT_RESULTS + 2):
        mask = np.zeros((40, 60), np.uint8)
        mask[i:i + 10, 15:30] = 255  # another result each time (gradio keeps one per content)
        cv2.imwrite(str(tmp_path / "mask.png"), mask)
        result = client.predict(None, handle_file(str(tmp_path / "mask.png")), "gated",
                                api_name="/on_inpaint")
        served.append(result[0]["path"])  # gradio's copy
        assert os.path.isfile(served[-1])
    assert len(os.listdir(out)) == app.KEPT_RESULTS  # the output folder keeps the newest only
    assert len(set(served)) == len(served), served
    deadline = time.monotonic() + 120
    while any(os.path.exists(path) for path in served) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(os.path.exists(path) for path in served), served


# ----------------------------------------------------------------------------- in a browser

def _browser_available() -> None:
    if CHROMIUM is None and not EXTRAS and not os.environ.get("CI"):
        pytest.skip("neither Debian's chromium nor the app extra (gradio, playwright) is "
                    "installed: apt-get install chromium; pip install -e '.[app,test]'")
    assert CHROMIUM, "chromium is missing: apt-get install chromium"
    assert EXTRAS, "gradio and playwright are missing: pip install -e '.[app,test]'"


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """The app on a free loopback port with two tiny trained workdirs (a copy of one)."""
    _browser_available()
    from pconv_jax.training.loop import train_and_evaluate
    root = tmp_path_factory.mktemp("app")
    config = demo_config(steps=2)
    config.train.eval_every_steps = 1000  # no evaluation: only the checkpoint matters
    train_and_evaluate(config, str(root / "net_a"))
    shutil.copytree(root / "net_a", root / "net_b")
    methods = app.load_methods([str(root / "net_a"), str(root / "net_b")])
    demo = app.build_app(methods, brush_size=BRUSH, output_dir=str(root / "out"))
    port = _free_port()
    app.launch(demo, port=port)
    yield f"http://127.0.0.1:{port}", [m.label for m in methods]
    demo.close()


@pytest.fixture(scope="session")
def browser(served):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(120_000)
    page.goto(served[0], wait_until="domcontentloaded")
    page.wait_for_selector("#editor")
    yield page
    page.close()


# The status line's text, or null while its event is still running.
_STATUS_JS = """() => {
    const tracker = document.querySelector('#status [data-testid=status-tracker]');
    if (tracker && !tracker.classList.contains('hide')) return null;
    return document.querySelector('#status [data-testid=markdown]').innerText;
}"""


def _status(page) -> str:
    return page.evaluate(_STATUS_JS)


def _status_contains(page, *texts: str) -> str:
    """Waits until the status line, settled, contains one of `texts`; returns it."""
    page.wait_for_function(f"texts => {{ const s = ({_STATUS_JS})(); "
                           f"return s !== null && texts.some(t => s.includes(t)); }}", arg=texts)
    return _status(page)


def _photo(path) -> np.ndarray:
    """A textured photo, darker than the editor's white surroundings (to find it on screen)."""
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    rgb = np.stack([40 + xx, 40 + yy, 100 + 50 * np.sin(xx / 7) * np.cos(yy / 5)], -1)
    photo = np.clip(rgb, 0, 200).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return photo


def _photo_rect(page) -> tuple[float, float, float, float]:
    """(x, y, width, height) of the photo on the page, found in a screenshot of the canvas."""
    canvas = page.locator("#editor canvas").first
    box = canvas.bounding_box()
    shot = cv2.imdecode(np.frombuffer(canvas.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    dark = shot.min(axis=-1) < 205  # the photo's pixels are all <= 200
    # Rows and columns mostly covered by the photo (the toolbar's dark text covers few).
    ys = np.nonzero(dark.sum(axis=1) > dark.sum(axis=1).max() / 2)[0]
    xs = np.nonzero(dark.sum(axis=0) > dark.sum(axis=0).max() / 2)[0]
    scale = box["width"] / shot.shape[1]
    return (box["x"] + xs.min() * scale, box["y"] + ys.min() * scale,
            (xs.max() - xs.min() + 1) * scale, (ys.max() - ys.min() + 1) * scale)


def _upload(page, path) -> str:
    """Uploads a file as the photo; the status line once it has changed."""
    before = _status(page)
    page.locator("#photo input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"before => {{ const s = ({_STATUS_JS})(); "
                           f"return s !== null && s !== before; }}", arg=before)
    return _status(page)


STROKES = [((0.15, 0.3), (0.55, 0.35)), ((0.45, 0.65), (0.85, 0.8))]  # in photo fractions


def _paint(page, rect) -> None:
    x, y, w, h = rect
    for (ax, ay), (bx, by) in STROKES:
        page.mouse.move(x + ax * w, y + ay * h)
        page.mouse.down()
        for t in (0.33, 0.66, 1.0):
            page.mouse.move(x + (ax + (bx - ax) * t) * w, y + (ay + (by - ay) * t) * h)
        page.mouse.up()


def _distance_to_strokes(shape) -> np.ndarray:
    h, w = shape
    lines = np.full((h, w), 255, np.uint8)
    for (ax, ay), (bx, by) in STROKES:
        cv2.line(lines, (round(ax * w), round(ay * h)), (round(bx * w), round(by * h)), 0, 1)
    return cv2.distanceTransform(lines, cv2.DIST_L2, 5)


def _inpaint_and_download(page, tmp_path, method: str) -> tuple[np.ndarray, str]:
    page.locator("#inpaint").click()
    status = _status_contains(page, "Filled", "Error")
    assert "Filled" in status and method in status, status
    with page.expect_download() as download:
        page.locator("#download").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), status


def test_paint_two_strokes_inpaint_and_download(page, served, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    assert "160x120" in _upload(page, tmp_path / "photo.png")
    _paint(page, _photo_rect(page))
    result, status = _inpaint_and_download(page, tmp_path, served[1][0])
    assert result.shape == photo.shape
    changed = (result != photo).any(axis=-1)
    distance = _distance_to_strokes(photo.shape[:2])
    # Unpainted pixels are exactly the photo's: every change lies under the brush.
    assert changed.any() and distance[changed].max() <= BRUSH + 3, distance[changed].max()
    np.testing.assert_array_equal(result[distance > BRUSH + 3], photo[distance > BRUSH + 3])
    # Painted pixels are filled by the network, and not with one colour.
    centre = distance <= 1
    assert changed[centre].mean() > 0.9
    assert result[changed].astype(np.float32).std(axis=0).max() > 2


def test_non_image_upload_is_a_message_and_the_app_keeps_running(page, tmp_path):
    (tmp_path / "notes.txt").write_text("these are notes, not pixels")
    status = _upload(page, tmp_path / "notes.txt")
    assert "'notes.txt' is not an image" in status, status
    page.locator("#inpaint").click()  # nothing loaded: a message, no crash
    assert "upload a photo" in _status_contains(page, "upload a photo or pick")
    _photo(tmp_path / "photo.png")
    assert "160x120" in _upload(page, tmp_path / "photo.png")


def test_model_selector_lists_both_workdirs_and_the_classical_methods(page, served, tmp_path):
    labels = served[1]
    assert labels[2:] == ["PatchMatch", "OpenCV Telea", "OpenCV Navier-Stokes"], labels
    photo = _photo(tmp_path / "photo.png")
    _upload(page, tmp_path / "photo.png")
    _paint(page, _photo_rect(page))
    page.locator("#method input").click()
    options = page.locator("ul[role=listbox] li")
    texts = options.all_inner_texts()  # the selected one carries a check mark
    assert len(texts) == 5 and all(sum(label in t for t in texts) == 1 for label in labels), texts
    options.filter(has_text=labels[1]).click()
    result, status = _inpaint_and_download(page, tmp_path, labels[1])
    assert result.shape == photo.shape and (result != photo).any()


def test_patchmatch_in_the_browser_fills_only_the_painted_pixels(page, served, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _upload(page, tmp_path / "photo.png")
    _paint(page, _photo_rect(page))
    page.locator("#method input").click()
    page.locator("ul[role=listbox] li").filter(has_text="PatchMatch").click()
    result, _ = _inpaint_and_download(page, tmp_path, "PatchMatch")
    distance = _distance_to_strokes(photo.shape[:2])
    np.testing.assert_array_equal(result[distance > BRUSH + 3], photo[distance > BRUSH + 3])
    # PatchMatch copies patches of the photo into the strokes: they change, and not to one colour
    assert (result != photo).any(axis=-1)[distance <= 1].mean() > 0.5
    assert result[distance <= 1].astype(np.float32).std(axis=0).max() > 2
