"""The web app's click-to-result time against its server time, in headless Chromium.

For each photo size it serves the app with one method, uploads a photo (skimage's astronaut
resized), paints three strokes with the mouse and presses Inpaint: once to warm up (a network
compiles), then `--repeats` times after undoing the fill (the same strokes again). The page
times each fill from the click to the result drawn on the canvas; the server's time is the
`serverSeconds` its answer carries. Prints one JSON line per size, with the bytes the photo
upload and each Inpaint request sent.

    python benchmarks/bench_app.py                                  # PatchMatch
    python benchmarks/bench_app.py --method telea --sizes 512x512
    python benchmarks/bench_app.py --workdir workdirs/demo_train    # the workdir's network
    python benchmarks/bench_app.py --config configs/demo.py         # a network, random weights
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile

import cv2
import skimage.data
from flax import nnx
from playwright.sync_api import sync_playwright

from pconv_jax import config as config_lib
from pconv_jax.inference import app, methods, model_inpainter
from pconv_jax.network.unet import PConvUNet

STROKES = [((0.2, 0.3), (0.45, 0.35)), ((0.6, 0.2), (0.65, 0.6)), ((0.3, 0.7), (0.8, 0.75))]


def the_method(args) -> app.Method:
    if args.workdir:
        return app.load_methods([args.workdir])[0]
    if args.config:
        model = PConvUNet.from_config(config_lib.load_config(args.config).model,
                                      rngs=nnx.Rngs(0))
        network = model_inpainter.ModelInpainter(model, pad_side=model_inpainter.bucket_side)
        return methods.Method("random", "network (random weights)", network)
    return methods.build(args.method)


def measure(page, url: str, path: str, label: str, repeats: int, brush: int) -> dict:
    sizes = {"photo": [], "inpaint": []}

    def record(request):
        for kind in sizes:
            if f"/api/{kind}" in request.url and request.method == "POST":
                sizes[kind].append(int(request.all_headers().get("content-length", 0)))
    page.on("requestfinished", record)
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#method").select_option(label)
    page.locator("#photo").set_input_files(path)
    page.wait_for_function("document.querySelector('#status').innerText.includes('Paint over')")
    page.locator("#brush").fill(str(brush))
    box = page.locator("#mask").bounding_box()
    for (ax, ay), (bx, by) in STROKES:
        page.mouse.move(box["x"] + ax * box["width"], box["y"] + ay * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + bx * box["width"], box["y"] + by * box["height"], steps=8)
        page.mouse.up()
    timings = []
    for i in range(repeats + 1):
        if i:
            page.locator("#undo").click()  # the fill goes, the strokes stay
        page.evaluate("window.editorTiming = null")
        page.locator("#inpaint").click()
        page.wait_for_function("window.editorTiming !== null || "
                               "document.querySelector('#status').className === 'error'")
        timing = page.evaluate("window.editorTiming")
        assert timing, page.locator("#status").inner_text()
        timings.append(timing)
    page.remove_listener("requestfinished", record)
    click = statistics.median(t["clickSeconds"] for t in timings[1:])
    server = statistics.median(t["serverSeconds"] for t in timings[1:])
    return {"click_to_result_s": round(click, 3), "server_s": round(server, 3),
            "click_over_server": round(click / server, 2),
            "first_click_s": round(timings[0]["clickSeconds"], 3),
            "photo_upload_bytes": sizes["photo"][0],
            "inpaint_request_bytes": max(sizes["inpaint"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a trained workdir's network")
    parser.add_argument("--config", help="a config's network with random weights")
    parser.add_argument("--method", default="patchmatch", choices=methods.SETTINGS_ONLY)
    parser.add_argument("--sizes", default="512x512,1600x1200", help="WxH, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    method = the_method(args)
    server = app.launch(app.build_app([method]), port=0)
    folder = tempfile.mkdtemp(prefix="bench_app_")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(600_000)
            for size in args.sizes.split(","):
                w, h = (int(v) for v in size.split("x"))
                path = os.path.join(folder, f"astronaut_{w}x{h}.png")
                photo = cv2.resize(skimage.data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)
                cv2.imwrite(path, cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
                figures = measure(page, server.url, path, method.label, args.repeats,
                                  brush=max(8, min(w, h) // 25))
                print(json.dumps({"photo": size, "method": method.label, **figures}), flush=True)
            browser.close()
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
