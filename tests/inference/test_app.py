"""The inpainting web app: bucketing, the large-photo path, the server's documents and
endpoints, and the editor page driven in headless Chromium (upload, paint with the mouse,
Inpaint, stacking, undo, before/after, keys, download)."""

from __future__ import annotations

import base64
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

from pconv_jax.data import images
from pconv_jax.inference import app, methods
from tests.helpers import REPO
from tests.helpers.training import demo_config

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if os.path.exists("/usr/bin/chromium") else None)
ROOT = str(REPO)
EXTRAS = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "playwright"))
BRUSH = 12  # brush diameter in the tests' app, in photo pixels
FILL = (0.1, 0.9, 0.3)  # the colour the fake method fills with
FILL_U8 = np.round(np.array(FILL) * 255).astype(np.uint8)


def _fake_method(seen: list[tuple[int, ...]]):
    """A method that records the shapes it is given and fills holes with a gradient."""
    def fill(images, masks):
        seen.append(images.shape)
        ramp = np.linspace(0.2, 0.8, images.shape[2], dtype=np.float32)[None, None, :, None]
        return np.where(masks > 0.5, images, ramp)
    return methods.Method("fake", "fake", fill)


def _flat_method(label: str = "Flat (test)"):
    """A method that fills holes with FILL: easy to find in a result."""
    return app.Method("flat", label, lambda images, masks: np.where(masks > 0.5, images,
                                                                    np.float32(FILL)))


# ----------------------------------------------------------------------------- no browser

def test_mask_png_becomes_holes_and_bad_masks_are_errors():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:8, 10:20] = 255
    mask[12, 3] = 40  # a faint anti-aliased edge still counts
    holes = app.mask_holes(cv2.imencode(".png", mask)[1].tobytes(), (20, 30))
    np.testing.assert_array_equal(holes, mask > 0)
    crop = cv2.imencode(".png", mask[5:13, 3:20])[1].tobytes()  # the strokes' box, placed
    np.testing.assert_array_equal(app.mask_holes(crop, (20, 30), (5, 3)), mask > 0)
    with pytest.raises(app.InputError, match=r"mask \(17x8 at x=14, y=5\) lies outside the "
                                             r"photo shown at 30x20"):
        app.mask_holes(crop, (20, 30), (5, 14))
    with pytest.raises(app.InputError, match="nothing to fill"):
        app.mask_holes(cv2.imencode(".png", mask * 0)[1].tobytes(), (20, 30))
    with pytest.raises(app.InputError, match="not a PNG"):
        app.mask_holes(cv2.imencode(".jpg", mask)[1].tobytes(), (20, 30))


def test_non_image_upload_is_a_page_error(tmp_path):
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


def test_page_errors_cut_paths_to_file_names():
    err = OSError(28, "No space left on device", "/tmp/pconv_app_1/tmpab/cat_inpainted.png")
    assert app.page_error(err) == ("Error: [Errno 28] No space left on device: "
                                   "'cat_inpainted.png'")
    err = OSError(2, "No such file", "C:\\Users\\me\\AppData\\Local\\Temp\\gradio\\cat.png")
    assert app.page_error(err) == "Error: [Errno 2] No such file: 'cat.png'"
    kept = "mask 'm.png' is 30x20 but the photo is 40x20; see http://host:7860/a and docs/app.md"
    assert app.page_error(app.InputError(kept)) == f"Error: {kept}"


def test_document_undo_and_redo_move_between_fills_without_copies():
    photo = np.random.default_rng(4).integers(0, 256, (30, 40, 3), np.uint8)
    document = app.Document("p", photo.copy(), False)
    first, second = photo.copy(), photo.copy()
    first[2:5, 3:9] = 7
    document.add_fill(first, (2, 3, 5, 9))
    second[2:5, 3:9] = 7
    second[20:25, 30:35] = 9
    document.add_fill(second, (20, 30, 25, 35))
    document.goto(0)
    np.testing.assert_array_equal(document.pixels, photo)
    document.goto(2)
    np.testing.assert_array_equal(document.pixels, second)
    document.goto(1)  # a fill made after an undo drops the undone one
    third = first.copy()
    third[10:12, 10:12] = 1
    document.add_fill(third, (10, 10, 12, 12))
    assert document.version == 2 and len(document.fills) == 2
    np.testing.assert_array_equal(document.pixels, third)
    with pytest.raises(app.InputError, match="reload the page"):
        document.goto(3)


def test_a_large_photo_is_shown_downscaled_and_patched_at_that_scale():
    photo = np.zeros((3000, 4000, 3), np.uint8)
    document = app.Document("p", photo, False)
    assert document.display_shape == (1536, 2048)
    filled = photo.copy()
    filled[1000:1100, 2000:2300] = 255
    document.add_fill(filled, (1000, 2000, 1100, 2300))
    (y0, x0, y1, x1), patch = document.display_patch((1000, 2000, 1100, 2300))
    assert (y0, x0, y1, x1) == (512, 1024, 564, 1178) and patch.shape == (52, 154, 3)
    assert patch.min() >= 0 and patch[5:-5, 5:-5].min() == 255


def test_documents_expire_and_keep_a_bounded_number():
    documents = app.Documents(lifetime_s=0.5, limit=2)
    keys = [documents.add(app.Document(str(i), np.zeros((2, 2, 3), np.uint8), False))
            for i in range(3)]
    assert len(set(keys)) == 3 and min(len(k) for k in keys) >= 32  # unguessable
    with pytest.raises(app.InputError, match="upload it again"):
        documents.get(keys[0])  # the least recently used went
    assert documents.get(keys[2]).name == "2"
    time.sleep(0.6)
    assert len(documents) == 0
    documents = app.Documents(lifetime_s=60, limit=10, max_bytes=250)
    keys = [documents.add(app.Document(str(i), np.zeros((6, 6, 3), np.uint8), False))
            for i in range(3)]  # 108 bytes each: two fit
    assert len(documents) == 2 and documents.get(keys[2]).name == "2"


def test_the_first_network_that_is_not_a_toy_is_preselected_else_patchmatch():
    methods = [_flat_method("toy net"), _flat_method("real net")] + app.classical_methods()
    assert app.preselected(methods, {"toy net"}) == "real net"
    assert app.preselected(methods, {"toy net", "real net"}) == "PatchMatch"


def test_busy_port_is_one_error_line_naming_the_port_and_nothing_says_serving():
    _extras_available()
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
    assert "already in use" in errors[0], errors[0]


# ----------------------------------------------------------------------------- over HTTP

def _extras_available() -> None:
    if not EXTRAS and not os.environ.get("CI"):
        pytest.skip("the app extra (fastapi, uvicorn) or playwright is missing: "
                    "pip install -e '.[app,test]'")
    assert EXTRAS, "fastapi, uvicorn or playwright is missing: pip install -e '.[app,test]'"


@pytest.fixture
def serve():
    """Serves build_app(methods, **kwargs) on a free loopback port; returns its URL."""
    _extras_available()
    servers = []

    def start(methods, **kwargs) -> str:
        servers.append(app.launch(app.build_app(methods, **kwargs), port=0))
        return servers[-1].url
    yield start
    for server in servers:
        server.close()


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


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)[1].tobytes()


def _mask_png(h: int = 40, w: int = 60) -> bytes:
    mask = np.zeros((h, w), np.uint8)
    mask[10:20, 15:30] = 255
    return _png(mask)


@pytest.mark.slow  # waits 3 s on purpose
def test_an_upload_waits_while_another_pages_inpaint_runs(serve):
    import httpx
    gate = _Gate()
    url = serve([gate.method])
    photo = _png(np.random.default_rng(3).integers(0, 256, (40, 60, 3), np.uint8))
    key = httpx.post(f"{url}/api/photo?name=a.png", content=photo).json()["document"]
    results: dict[str, httpx.Response] = {}

    def post(name, path, body):
        results[name] = httpx.post(f"{url}{path}", content=body, timeout=300)
    fill = threading.Thread(target=post, args=("fill", f"/api/inpaint/{key}?version=0&method=gated",
                                               _mask_png()))
    fill.start()
    assert gate.started.wait(300)
    upload = threading.Thread(target=post, args=("upload", "/api/photo?name=b.png", photo))
    upload.start()
    upload.join(3)  # ample for a 60x40 upload, were it served beside the Inpaint
    assert upload.is_alive()
    gate.opened.set()
    fill.join(300)
    upload.join(300)
    assert "Filled" in results["fill"].json()["message"]
    assert "60x40" in results["upload"].json()["message"]


def test_two_pages_never_see_each_others_photos_and_errors_name_no_server_path(serve, tmp_path):
    import httpx
    gate = _Gate()
    gate.opened.set()
    url = serve([gate.method])
    photos = [np.full((40, 60, 3), v, np.uint8) for v in (10, 240)]
    keys = [httpx.post(f"{url}/api/photo?name=p{i}.png", content=_png(p)).json()["document"]
            for i, p in enumerate(photos)]
    answer = httpx.post(f"{url}/api/inpaint/{keys[0]}?version=0&method=gated",
                        content=_mask_png()).json()
    assert answer["version"] == 1 and answer["box"] == [15, 10, 15, 10]
    patch = cv2.imdecode(np.frombuffer(base64.b64decode(answer["patch"]), np.uint8), 1)
    assert (patch == 128).all()  # the gate fills with 0.5
    for key, photo in zip(keys, photos):
        result = cv2.imdecode(np.frombuffer(httpx.get(f"{url}/api/download/{key}?version=0")
                                            .content, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(result, photo)  # the fill touched only its own page
    unknown = httpx.get(f"{url}/api/download/{keys[0][:-2]}xx?version=0")
    assert unknown.status_code == 400 and "upload it again" in unknown.json()["error"]
    bad = httpx.post(f"{url}/api/photo?name=notes.txt", content=b"not pixels").json()["error"]
    assert "'notes.txt' is not an image" in bad and "/" not in bad, bad
    gate.error = RuntimeError(f"a bug, in {tmp_path}")  # not a user's error: the log only
    failed = httpx.post(f"{url}/api/inpaint/{keys[1]}?version=0&method=gated",
                        content=_mask_png())
    assert failed.status_code == 500 and str(tmp_path) not in failed.text
    assert "server failed" in failed.json()["error"]


@pytest.mark.slow
def test_a_large_photo_is_shown_downscaled_and_downloaded_at_full_resolution(serve):
    import httpx
    url = serve([_flat_method()])
    yy, xx = np.mgrid[0:2500, 0:3000]
    noise = np.random.default_rng(6).integers(0, 4, (2500, 3000, 3))  # every pixel checked
    photo = ((yy + xx)[..., None] // 40 + noise).astype(np.uint8)
    opened = httpx.post(f"{url}/api/photo?name=big.png", content=_png(photo), timeout=60).json()
    assert (opened["displayWidth"], opened["displayHeight"]) == (2048, 1707)
    shown = cv2.imdecode(np.frombuffer(httpx.get(f"{url}/api/photo/{opened['document']}")
                                       .content, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == (1707, 2048, 3)
    strokes = np.full((20, 30), 255, np.uint8)  # painted at x 100..130, y 200..220 when shown
    answer = httpx.post(f"{url}/api/inpaint/{opened['document']}?version=0&x=100&y=200"
                        f"&method=Flat (test)", content=_png(strokes), timeout=60).json()
    x, y, w, h = answer["box"]  # the filled box, shown: the strokes' with a pixel to spare
    assert x <= 100 and y <= 200 and 130 <= x + w <= 132 and 220 <= y + h <= 222, answer["box"]
    result = cv2.imdecode(np.frombuffer(httpx.get(
        f"{url}/api/download/{opened['document']}?version=1", timeout=60).content, np.uint8),
        cv2.IMREAD_COLOR)[..., ::-1]
    holes = np.zeros((1707, 2048), bool)
    holes[200:220, 100:130] = True
    holes = images.resize_nearest(holes, (2500, 3000))  # the strokes scaled back to the photo
    np.testing.assert_array_equal(result[~holes], photo[~holes])
    assert (result[holes] == FILL_U8).all() and holes.sum() > 20 * 30 * 2


# ----------------------------------------------------------------------------- in a browser

def _browser_available() -> None:
    _extras_available()
    if CHROMIUM is None and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is missing: apt-get install chromium")
    assert CHROMIUM, "chromium is missing: apt-get install chromium"


MAX_UPLOAD_MB = 0.5


@pytest.fixture(scope="session")
def served():
    """The app on a free loopback port: the flat test method (preselected), the classical ones
    and a toy; small uploads only."""
    _browser_available()
    methods = [_flat_method()] + app.classical_methods()
    server = app.launch(app.build_app(methods, brush_size=BRUSH, max_upload_mb=MAX_UPLOAD_MB),
                        port=0)
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def browser(served):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def _new_page(browser, url, width=1200, height=800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#view")
    return page


@pytest.fixture
def page(browser, served):
    page = _new_page(browser, served)
    yield page
    page.close()


def _photo(path, seed: int = 0) -> np.ndarray:
    """A textured 160x120 photo written to `path`; no pixel is FILL."""
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    rgb = np.stack([40 + xx, 40 + yy, 100 + 50 * np.sin(xx / 7 + seed) * np.cos(yy / 5)], -1)
    photo = np.clip(rgb + 30 * seed, 0, 200).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return photo


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _open(page, path) -> str:
    """Uploads a photo file; the status line once it names the file (or says an error)."""
    page.evaluate("document.querySelector('#status').textContent = ''")
    page.locator("#photo").set_input_files(str(path))
    page.wait_for_function(
        "name => { const s = document.querySelector('#status'); "
        "return s.className === 'error' || s.textContent.startsWith(name + ':'); }",
        arg=os.path.splitext(os.path.basename(path))[0])
    return _status(page)


def _fill(page, trigger=None) -> str:
    """Presses Inpaint (or runs `trigger`); the status line once the fill is shown."""
    page.evaluate("window.lastTiming = window.editorTiming")
    (trigger or page.locator("#inpaint").click)()
    page.wait_for_function("window.editorTiming !== window.lastTiming || "
                           "document.querySelector('#status').className === 'error'")
    return _status(page)


STROKES = [((0.15, 0.3), (0.55, 0.35)), ((0.45, 0.65), (0.85, 0.8))]  # in photo fractions


def _paint(page, strokes=STROKES) -> None:
    box = page.locator("#mask").bounding_box()
    for (ax, ay), (bx, by) in strokes:
        page.mouse.move(box["x"] + ax * box["width"], box["y"] + ay * box["height"])
        page.mouse.down()
        for t in (0.33, 0.66, 1.0):
            page.mouse.move(box["x"] + (ax + (bx - ax) * t) * box["width"],
                            box["y"] + (ay + (by - ay) * t) * box["height"])
        page.mouse.up()


def _distance_to(strokes, shape) -> np.ndarray:
    h, w = shape
    lines = np.full((h, w), 255, np.uint8)
    for (ax, ay), (bx, by) in strokes:
        cv2.line(lines, (round(ax * w), round(ay * h)), (round(bx * w), round(by * h)), 0, 1)
    return cv2.distanceTransform(lines, cv2.DIST_L2, 5)


def _canvas(page, element: str = "image") -> np.ndarray:
    """The pixels of one of the editor's canvases, RGBA (H, W, 4) (read as a PNG: fast)."""
    url = page.evaluate("id => document.getElementById(id).toDataURL('image/png')", element)
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


def _download(page, tmp_path) -> np.ndarray:
    with page.expect_download() as download:
        page.locator("#download").click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _on_screen(page, fx: float, fy: float) -> np.ndarray:
    """The RGB colour the page shows at a photo point given in fractions."""
    box = page.locator("#mask").bounding_box()
    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
    return shot[round(y), round(x), ::-1].astype(int)


def test_paint_inpaint_download_changes_only_the_strokes(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    assert "160x120" in _open(page, tmp_path / "photo.png")
    page.locator("#method").select_option("PatchMatch")
    _paint(page)
    status = _fill(page)
    assert "Filled" in status and "PatchMatch" in status, status
    result = _download(page, tmp_path)
    assert result.shape == photo.shape
    changed = (result != photo).any(axis=-1)
    distance = _distance_to(STROKES, photo.shape[:2])
    # Unpainted pixels are exactly the photo's: every change lies under the brush.
    assert changed.any() and distance[changed].max() <= BRUSH / 2 + 2, distance[changed].max()
    # PatchMatch copies patches of the photo into the strokes: they change, not to one colour.
    assert changed[distance <= 1].mean() > 0.5
    assert result[distance <= 1].astype(np.float32).std(axis=0).max() > 2
    np.testing.assert_array_equal(_canvas(page)[..., :3], result)  # the canvas is the result


def test_fills_stack_and_undo_redo_restore_the_canvas(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    first, second = STROKES[:1], STROKES[1:]
    near_first = _distance_to(first, photo.shape[:2]) <= 1
    near_second = _distance_to(second, photo.shape[:2]) <= 1
    _paint(page, first)
    assert "Filled" in _fill(page)
    after_first = _canvas(page)
    _paint(page, second)
    assert "Filled" in _fill(page)
    result = _download(page, tmp_path)
    assert (result[near_first] == FILL_U8).all() and (result[near_second] == FILL_U8).all()
    page.locator("#undo").click()  # the second fill goes; its stroke shows again
    np.testing.assert_array_equal(_canvas(page), after_first)
    assert _canvas(page, "mask")[near_second][..., 3].min() > 0
    page.locator("#undo").click()  # the second stroke goes
    assert _canvas(page, "mask")[..., 3].max() == 0
    page.locator("#undo").click()  # the first fill goes
    page.locator("#undo").click()  # the first stroke goes: the photo as uploaded
    np.testing.assert_array_equal(_canvas(page)[..., :3], photo)
    assert page.locator("#undo").is_disabled()
    np.testing.assert_array_equal(_download(page, tmp_path), photo)
    for _ in range(4):
        page.locator("#redo").click()
    np.testing.assert_array_equal(_canvas(page)[..., :3], result)
    np.testing.assert_array_equal(_download(page, tmp_path), result)


def test_a_mask_file_adds_its_holes(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    holes = np.zeros((120, 160), np.uint8)
    holes[30:50, 40:90] = 255  # white = hole
    cv2.imwrite(str(tmp_path / "mask.png"), holes)
    cv2.imwrite(str(tmp_path / "small.png"), holes[:60, :80])
    page.locator("#mask-file").set_input_files(str(tmp_path / "small.png"))
    page.wait_for_function("document.querySelector('#status').className === 'error'")
    assert "80x60 but the photo is 160x120" in _status(page)
    page.locator("#mask-file").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_function("document.querySelector('#status').innerText.includes('added')")
    assert "Filled" in _fill(page)
    result = _download(page, tmp_path)
    np.testing.assert_array_equal(result[holes == 0], photo[holes == 0])
    assert (result[holes > 0] == FILL_U8).all()


def test_auto_fills_each_stroke_when_it_ends(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    page.locator("#auto").check()
    for stroke in STROKES:  # each stroke fills on its own, on the canvas the one before left
        assert "Filled" in _fill(page, lambda stroke=stroke: _paint(page, [stroke]))
    near = _distance_to(STROKES, photo.shape[:2]) <= 1
    assert (_canvas(page)[near][..., :3] == FILL_U8).all()
    assert _canvas(page, "mask")[..., 3].max() == 0


def test_before_after_shows_the_original_on_the_same_canvas(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    _paint(page)
    _fill(page)
    point = (0.35, 0.325)  # on the first stroke
    original = photo[round(point[1] * 120), round(point[0] * 160)].astype(int)
    assert np.abs(_on_screen(page, *point) - FILL_U8).max() <= 3
    page.locator("#before").click()
    assert np.abs(_on_screen(page, *point) - original).max() <= 8
    page.locator("#before").click()
    assert np.abs(_on_screen(page, *point) - FILL_U8).max() <= 3
    page.keyboard.down("b")  # held: before
    assert np.abs(_on_screen(page, *point) - original).max() <= 8
    page.keyboard.up("b")
    assert np.abs(_on_screen(page, *point) - FILL_U8).max() <= 3


def test_ten_uploads_after_inpaints_each_leave_a_usable_editor(page, tmp_path):
    stroke = [((0.2, 0.5), (0.8, 0.5))]
    near = _distance_to(stroke, (120, 160)) <= 1
    for i in range(10):
        photo = _photo(tmp_path / f"photo{i}.png", seed=i % 2)
        assert "160x120" in _open(page, tmp_path / f"photo{i}.png")
        np.testing.assert_array_equal(_canvas(page)[..., :3], photo)  # the new photo, shown
        assert page.locator("#undo").is_disabled() and page.locator("#redo").is_disabled()
        _paint(page, stroke)
        assert "Filled" in _fill(page), _status(page)
        assert (_canvas(page)[near][..., :3] == FILL_U8).all()
        if i % 2:  # the next upload comes while an Inpaint runs: its answer is dropped
            _paint(page, [((0.5, 0.1), (0.5, 0.9))])
            page.locator("#inpaint").click()


def test_no_control_or_key_removes_the_photo(page, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    labels = " ".join(page.locator("#bar button, #bar a, #bar label").all_inner_texts())
    assert not any(word in labels.lower() for word in ("clear", "trash", "remove", "delete"))
    for key in ("Control+z", "Control+Shift+z", "Control+y", "Delete", "Backspace", "Escape"):
        page.keyboard.press(key)
    for control in ("undo", "redo", "before", "before", "inpaint"):
        page.evaluate("id => document.getElementById(id).click()", control)
    np.testing.assert_array_equal(_canvas(page)[..., :3], photo)
    _paint(page)
    _fill(page)
    for _ in range(5):  # more undos than edits
        page.keyboard.press("Control+z")
    np.testing.assert_array_equal(_canvas(page)[..., :3], photo)


def test_keys_for_brush_undo_redo_inpaint_and_the_wheel_and_drags_move_the_view(page, tmp_path):
    _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    brush = page.locator("#brush")
    page.keyboard.press("]")
    assert int(brush.input_value()) > BRUSH
    page.keyboard.press("[")
    page.keyboard.press("[")
    assert int(brush.input_value()) < BRUSH
    _paint(page, STROKES[:1])
    painted = lambda: _canvas(page, "mask")[..., 3].max() > 0  # noqa: E731
    page.keyboard.press("Control+z")
    assert not painted()
    page.keyboard.press("Control+Shift+z")
    assert painted()
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+y")
    assert painted()
    assert "Filled" in _fill(page, lambda: page.keyboard.press("Enter"))
    assert not painted()
    # The wheel zooms around the cursor: the photo point under it stays there.
    before = page.locator("#mask").bounding_box()
    x, y = before["x"] + 0.3 * before["width"], before["y"] + 0.6 * before["height"]
    page.mouse.move(x, y)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(100)
    after = page.locator("#mask").bounding_box()
    assert after["width"] > 1.5 * before["width"]
    assert abs((x - after["x"]) / after["width"] - 0.3) < 0.01
    assert abs((y - after["y"]) / after["height"] - 0.6) < 0.01
    # Space + drag and a middle-button drag pan; neither paints.
    for press, release, button in ((lambda: page.keyboard.down(" "),
                                    lambda: page.keyboard.up(" "), "left"),
                                   (lambda: None, lambda: None, "middle")):
        start = page.locator("#mask").bounding_box()
        press()
        page.mouse.move(x, y)
        page.mouse.down(button=button)
        page.mouse.move(x + 40, y + 25, steps=4)
        page.mouse.up(button=button)
        release()
        moved = page.locator("#mask").bounding_box()
        assert (round(moved["x"] - start["x"]), round(moved["y"] - start["y"])) == (40, 25)
        assert not painted()


def test_phone_layout_shows_inpaint_and_the_result_on_the_first_screen(browser, served,
                                                                       tmp_path):
    page = _new_page(browser, served, 390, 844)
    try:
        _photo(tmp_path / "photo.png")
        _open(page, tmp_path / "photo.png")
        _paint(page)
        button = page.locator("#inpaint").bounding_box()
        assert button["y"] >= 0 and button["y"] + button["height"] <= 844, button
        assert "Filled" in _fill(page)
        result = page.locator("#mask").bounding_box()
        assert result["y"] >= 0 and result["y"] + result["height"] <= 844, result
        assert result["width"] >= 300, result  # the photo fills the phone's width
        status = page.locator("#status").bounding_box()
        assert status["y"] + status["height"] <= 844, status
        assert page.evaluate("document.scrollingElement.scrollHeight") <= 844
    finally:
        page.close()


def test_inpaint_sends_only_the_mask(page, tmp_path):
    photo = np.random.default_rng(5).integers(0, 256, (300, 400, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "noise.png"), photo)
    sizes: dict[str, list[int]] = {"photo": [], "inpaint": []}

    def record(request):  # a Blob body is not in post_data_buffer: its size is
        for kind in sizes:
            if f"/api/{kind}" in request.url and request.method == "POST":
                sizes[kind].append(int(request.all_headers()["content-length"]))
    page.on("requestfinished", record)
    _open(page, tmp_path / "noise.png")
    _paint(page)
    assert "Filled" in _fill(page)
    photo_bytes = os.path.getsize(tmp_path / "noise.png")
    assert sizes["photo"] == [photo_bytes], sizes
    assert len(sizes["inpaint"]) == 1 and sizes["inpaint"][0] < photo_bytes / 20, sizes


def test_errors_show_next_to_the_button_without_server_paths(page, tmp_path):
    page.locator("#inpaint").click()
    assert "upload a photo" in _status(page)
    photo = _photo(tmp_path / "photo.png")
    _open(page, tmp_path / "photo.png")
    page.locator("#inpaint").click()
    assert "nothing to fill" in _status(page) and page.locator("#status.error").count() == 1
    button, status = (page.locator(s).bounding_box() for s in ("#inpaint", "#status"))
    assert status["y"] < button["y"] + button["height"] and button["y"] < status["y"] + 40
    assert 0 <= status["x"] - (button["x"] + button["width"]) < 250  # beside it, in view
    (tmp_path / "big.png").write_bytes(os.urandom(int(MAX_UPLOAD_MB * 2**20) + 1))
    assert f"upload limit of {MAX_UPLOAD_MB:g} MB" in _open(page, tmp_path / "big.png")
    (tmp_path / "notes.txt").write_text("these are notes, not pixels")
    message = _open(page, tmp_path / "notes.txt")
    assert "'notes.txt' is not an image" in message and "/" not in message, message
    np.testing.assert_array_equal(_canvas(page)[..., :3], photo)  # the photo stays


def test_grayscale_photos_get_gray_fills_and_dropped_transparency_is_said(page, tmp_path):
    gray = _photo(tmp_path / "colour.png")[..., 1]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    _open(page, tmp_path / "gray.png")
    _paint(page)
    _fill(page)
    result = _download(page, tmp_path)
    assert result.shape == gray.shape  # a gray PNG
    changed = result != gray
    assert changed.any() and (result[changed] == round(FILL_U8.mean())).all()
    rgba = np.dstack([_photo(tmp_path / "c.png"), np.full((120, 160), 128, np.uint8)])
    PIL.Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert "transparency is dropped" in _open(page, tmp_path / "clear.png")


def test_toy_networks_are_marked_in_the_page_and_patchmatch_preselected(serve, browser):
    url = serve([_flat_method("tiny net")] + app.classical_methods(), toys=["tiny net"])
    page = _new_page(browser, url)
    try:
        assert page.locator("#method").input_value() == "PatchMatch"
        options = page.locator("#method option").all_inner_texts()
        assert options == ["tiny net (toy)", "PatchMatch", "OpenCV Telea",
                           "OpenCV Navier-Stokes"], options
        assert "Toy: tiny net" in page.locator("#notes").inner_text()
    finally:
        page.close()
