"""Screenshots of the explorer's four views, for the README.

Starts the explorer on the bundled model and a generated scene (``featuremap.explore``), drives
headless Chromium through the convolution lab, the network, what-if and uses, and saves one
PNG per view (1280 x 900) into the folder given::

    python scripts/explorer_screenshots.py docs/explorer
    python scripts/explorer_screenshots.py shots --chromium /usr/bin/chromium

Needs the explorer's extra and Playwright (``pip install 'featuremap[explore]' playwright``);
a Chromium that Playwright installed, or one named with ``--chromium``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 900}


def settle(page, pause: float = 0.3) -> None:
    """Wait until the page has no request in flight, then let it paint."""
    time.sleep(pause)
    page.wait_for_function("document.body.dataset.busy !== '1'", timeout=60_000)
    time.sleep(0.25)


def click_map(page, grid: str, index: int, fy: float, fx: float) -> None:
    """Click the map `index` of a grid at the fractions (fy, fx) of its height and width."""
    canvas = page.locator(f"{grid} .tile > canvas").nth(index)
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def slide(page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def lab(page, out: Path) -> None:
    page.click("#tabs button[data-view=lab]")
    page.fill("#lab-filters", "sobel,laplacian,sharpen,emboss")
    settle(page, 0.6)
    slide(page, "#lab-stride", 2)
    settle(page)
    slide(page, "#lab-padding", 1)
    settle(page)
    page.select_option("#lab-padmode", "reflect")
    settle(page)
    click_map(page, "#lab-grid", 0, 0.0, 0.45)  # a value in the top row: its patch has padding
    settle(page)
    page.screenshot(path=str(out / "lab.png"))


def network(page, out: Path) -> None:
    page.click("#tabs button[data-view=net]")
    settle(page, 0.6)
    page.click("#net-table tr[data-name='backbone.block2.conv1']")
    settle(page)
    click_map(page, "#net-grid", 1, 0.45, 0.3)
    settle(page, 0.6)
    page.screenshot(path=str(out / "network.png"))


def whatif(page, out: Path) -> None:
    page.click("#tabs button[data-view=whatif]")
    settle(page, 0.6)
    page.select_option("#wi-layer", "backbone.block2.conv1")
    settle(page)
    slide(page, "#wi-out", 24)
    settle(page, 0.6)
    page.screenshot(path=str(out / "whatif.png"))


def uses(page, out: Path) -> None:
    page.click("#tabs button[data-view=uses]")
    settle(page, 1.0)
    page.screenshot(path=str(out / "uses.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path,
                        help="folder for lab.png, network.png, whatif.png and uses.png")
    import os
    import shutil

    found = os.environ.get("FEATUREMAP_CHROMIUM") or shutil.which("chromium")
    parser.add_argument("--chromium", default=found,
                        help="a Chromium executable to drive (default: FEATUREMAP_CHROMIUM, else "
                        "the 'chromium' on PATH, else Playwright's own)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from featuremap.web.server import explore

    args.out.mkdir(parents=True, exist_ok=True)
    handle = explore()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(handle.url)
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
            for step in (lab, network, whatif, uses):
                step(page, args.out)
                print(f"wrote {args.out / step.__name__}.png")
            browser.close()
    finally:
        handle.stop()


if __name__ == "__main__":
    main()
