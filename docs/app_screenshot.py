"""Takes docs/app.png: the web app in headless Chromium after painting and inpainting an example.

    python docs/app_screenshot.py [--workdir workdirs/demo_train] [--out docs/app.png]

Starts the app on a free loopback port (the workdirs' networks and the classical methods, the
preselected one fills), picks the coffee example, paints two strokes with the mouse, presses
Inpaint, paints a third stroke and screenshots the page at 1280x800. Needs the app extra,
Playwright and Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil

from playwright.sync_api import sync_playwright

from pconv_jax.inference import app

FILLED = [((0.40, 0.30), (0.60, 0.33)), ((0.30, 0.72), (0.52, 0.78))]  # in photo fractions
PAINTED = [((0.70, 0.55), (0.85, 0.60))]  # painted, not yet filled


def paint(page, strokes) -> None:
    box = page.locator("#mask").bounding_box()
    for (ax, ay), (bx, by) in strokes:
        page.mouse.move(box["x"] + ax * box["width"], box["y"] + ay * box["height"])
        page.mouse.down()
        for t in (0.25, 0.5, 0.75, 1.0):
            page.mouse.move(box["x"] + (ax + (bx - ax) * t) * box["width"],
                            box["y"] + (ay + (by - ay) * t) * box["height"])
        page.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", default=[], help="repeatable")
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--example", default="coffee")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    methods = app.load_methods(args.workdir)
    server = app.launch(app.build_app(methods, brush_size=24), port=0)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(server.url, wait_until="domcontentloaded")
            page.locator("#example").select_option(args.example)
            page.wait_for_function("document.querySelector('#status').innerText"
                                   ".includes('Paint over')")
            paint(page, FILLED)
            page.locator("#inpaint").click()
            page.wait_for_function("window.editorTiming !== null")
            paint(page, PAINTED)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
