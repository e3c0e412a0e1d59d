"""Takes docs/app.png: the web app in headless Chromium after painting and inpainting an example.

    python docs/app_screenshot.py --workdir workdirs/demo_train [--out docs/app.png]

Starts the app on a free loopback port, picks the coffee example, paints two strokes with the
mouse, presses Inpaint and screenshots the page. Needs the app extra, Playwright and Debian's
chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import socket

from playwright.sync_api import sync_playwright

from pconv_jax.inference import app

STROKES = [((0.38, 0.30), (0.62, 0.34)), ((0.30, 0.70), (0.55, 0.78))]  # in photo fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", default=[], help="repeatable")
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--example", default="coffee")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    demo = app.build_app(app.load_methods(args.workdir), brush_size=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, port=port, block=False)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}", wait_until="domcontentloaded")
            page.locator("#example input").click()
            page.locator("ul[role=listbox] li").filter(has_text=args.example).click()
            page.wait_for_function("document.querySelector('#status').innerText"
                                   ".includes('Paint over')")
            page.wait_for_timeout(1000)
            x, y, w, h = photo_rect(page)
            for (ax, ay), (bx, by) in STROKES:
                page.mouse.move(x + ax * w, y + ay * h)
                page.mouse.down()
                for t in (0.25, 0.5, 0.75, 1.0):
                    page.mouse.move(x + (ax + (bx - ax) * t) * w, y + (ay + (by - ay) * t) * h)
                page.mouse.up()
            page.locator("#inpaint").click()
            page.wait_for_function("document.querySelector('#status').innerText"
                                   ".includes('Filled')")
            page.wait_for_timeout(1500)  # let the result image render
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")


def photo_rect(page) -> tuple[float, float, float, float]:
    """(x, y, width, height) of the photo on the page: the editor's image sprite is centred in
    its canvas, so read it from the canvas's non-white rows and columns."""
    import numpy as np

    from pconv_jax.data import images
    canvas = page.locator("#editor canvas").first
    box = canvas.bounding_box()
    shot = images.decode_image_bytes(canvas.screenshot())
    ink = shot.min(axis=-1) < 235
    ys = np.nonzero(ink.sum(axis=1) > ink.sum(axis=1).max() / 2)[0]
    xs = np.nonzero(ink.sum(axis=0) > ink.sum(axis=0).max() / 2)[0]
    scale = box["width"] / shot.shape[1]
    return (box["x"] + xs.min() * scale, box["y"] + ys.min() * scale,
            (xs.max() - xs.min() + 1) * scale, (ys.max() - ys.min() + 1) * scale)


if __name__ == "__main__":
    main()
