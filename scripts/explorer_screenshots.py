"""Screenshots of the explorer's five views, for the README.

Starts the explorer on the bundled model and a generated scene (``featuremap.explore``), with
24 generated scenes and their masks as the Channels view's data, drives headless Chromium
through the convolution lab, the network, what-if, uses and channels, and saves one PNG per
view (1280 x 900; the channels' table whole, as tall as it is) into the folder given::

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


def channels(page, out: Path) -> None:
    page.click("#tabs button[data-view=channels]")
    settle(page, 0.6)
    page.select_option("#ch-layer", "backbone.block3")
    page.fill("#ch-channels", "0-7")
    page.fill("#ch-k", "8")
    page.fill("#ch-steps", "96")
    page.click("#ch-compute")
    page.wait_for_selector("#ch-table tbody tr", timeout=300_000)
    settle(page)
    page.click("#ch-table th[data-key=iou]")
    settle(page)
    page.screenshot(path=str(out / "channels.png"), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path,
                        help="folder for lab.png, network.png, whatif.png, uses.png and "
                        "channels.png")
    import os
    import shutil

    found = os.environ.get("FEATUREMAP_CHROMIUM") or shutil.which("chromium")
    parser.add_argument("--chromium", default=found,
                        help="a Chromium executable to drive (default: FEATUREMAP_CHROMIUM, else "
                        "the 'chromium' on PATH, else Playwright's own)")
    args = parser.parse_args()
    import tempfile

    from playwright.sync_api import sync_playwright

    from featuremap.bundled.scenes import save_dataset
    from featuremap.web.server import explore

    args.out = args.out.resolve()  # before the chdir below
    args.out.mkdir(parents=True, exist_ok=True)
    folder = tempfile.TemporaryDirectory()
    os.chdir(folder.name)  # the page names the data as given: "scenes"
    save_dataset("scenes", 24, seed=3, layout="segmentation")
    handle = explore(data="scenes")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(handle.url)
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
            for step in (lab, network, whatif, uses, channels):
                step(page, args.out)
                print(f"wrote {args.out / step.__name__}.png")
            browser.close()
    finally:
        handle.stop()
        os.chdir(Path(__file__).resolve().parent)
        folder.cleanup()


if __name__ == "__main__":
    main()
