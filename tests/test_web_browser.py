"""The explorer's page in a real headless Chromium (Playwright) on a real server: it loads and
draws, takes an upload, follows the stride slider, explains a clicked value with the API's
numbers, shows a layer and a channel of the network, breaks a layer in the what-if view and
exports a PNG. A screenshot of each view is saved under the test's tmp_path.

The browser is ``/usr/bin/chromium`` (Debian's package) or the one ``FEATUREMAP_CHROMIUM``
names. Without one these tests skip, unless ``FEATUREMAP_REQUIRE_BROWSER=1`` (CI sets it): then
a missing browser fails them.

The page's hooks these tests rely on: ``body[data-ready='1']`` once the first maps are drawn
(``window.fmStats.ready``: milliseconds from DOMContentLoaded), ``body[data-busy]`` while a
request is in flight, the tabs ``#tabs button[data-view=lab|net|whatif|uses|channels]``
(the Channels view is tested in test_web_channels.py), the file input ``#file``, ``#image``
and ``#image-info``, the lab's ``#lab-stride`` slider, ``#lab-maps-title``
("Feature maps: D x H x W ..."), ``#lab-cost``, ``#lab-grid .tile > canvas``, ``#lab-explain``
(its first ``.line`` says "row Y, col X", its ``.sum`` ends "= VALUE"), the network's
``#net-table tr[data-name]``, ``#net-maps-title``, ``#net-grid .tile``, ``#net-detail-title``,
the what-if's ``#wi-layer``, ``#wi-out`` and ``#wi-broken``, the uses' ``#use-top``,
``#export`` (a download ``featuremap-VIEW.png``) and the error bar ``#error``.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from webhelp import chromium  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server():
    from featuremap.web.server import explore

    handle = explore()  # the bundled model and generated scene 7 on a free port
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def page_works(browser, server) -> None:
    """Load the page once: when it never becomes ready, every test fails at once with why
    (not after a minute each)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        tab = context.new_page()
        tab.goto(server.url)
        try:
            tab.wait_for_selector("body[data-ready='1']", state="attached", timeout=30_000)
        except Exception:  # playwright's TimeoutError
            pytest.fail("the explorer's page never set body[data-ready='1'] (its hook for 'the "
                        "first maps are drawn'): is static/ the explorer's page?", pytrace=False)
    finally:
        context.close()


@pytest.fixture
def page(browser, server, page_works):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.sent = []  # the JSON bodies the page posted to /api/lab
    tab.on("request", lambda r: tab.sent.append(r.post_data_json)
           if r.url.endswith("/api/lab") and r.method == "POST" else None)
    tab.goto(server.url)
    tab.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
    yield tab
    context.close()
    assert errors == [], errors


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# ------------------------------------------------------------------------------ helpers


def settle(page, pause: float = 0.3) -> None:
    """Let the page send what it throttles, then wait until nothing is in flight."""
    time.sleep(pause)
    page.wait_for_function("document.body.dataset.busy !== '1'", timeout=60_000)


def slide(page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def no_error(page) -> None:
    bar = page.locator("#error")
    assert bar.is_hidden(), bar.inner_text()


def lab_dims(page) -> tuple[int, int, int]:
    text = page.inner_text("#lab-maps-title")
    found = re.search(r"(\d+) x (\d+) x (\d+)", text)
    assert found, text
    return tuple(int(g) for g in found.groups())


def lab_body(page) -> dict:
    """The last maps request the lab sent (no ``at``, no channel), to ask the API the same."""
    bodies = [b for b in page.sent if isinstance(b, dict) and b.get("at") is None]
    assert bodies, "the page sent no lab request"
    return {k: v for k, v in bodies[-1].items() if k not in ("channel", "seq")}


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 1000
    return path


# ------------------------------------------------------------------------------ scenarios


def test_the_page_loads_and_draws(page, tmp_path, capsys):
    d, h, w = lab_dims(page)
    canvases = page.locator("#lab-grid .tile > canvas")
    assert canvases.count() == d
    assert canvases.first.evaluate("c => [c.width, c.height]") == [w, h]
    assert page.inner_text("#lab-cost").strip()
    no_error(page)
    ready = page.evaluate("() => window.fmStats.ready")
    assert ready is not None and ready > 0
    with capsys.disabled():
        print(f"\npage ready (DOMContentLoaded to first maps drawn): {ready:.0f} ms")
    shot(page, tmp_path, "lab")


def test_an_upload(page, api, tmp_path):
    from PIL import Image

    pixels = (np.arange(48 * 40 * 3) % 253).astype(np.uint8).reshape(48, 40, 3)
    path = tmp_path / "photo.jpg"  # PNG bytes under a .jpg name: the server sniffs the content
    Image.fromarray(pixels).save(path, format="PNG")
    with page.expect_response(lambda r: r.url.endswith("/api/images")) as got:
        page.set_input_files("#file", str(path))
    assert got.value.status == 200
    page.wait_for_function("() => /40 x 48 px/.test(document.getElementById('image-info')"
                           ".textContent)", timeout=60_000)
    image_id = page.input_value("#image")
    assert "photo" not in image_id and image_id.isalnum()
    settle(page)
    no_error(page)
    shown = Image.open(io.BytesIO(api.get(f"/api/images/{image_id}.png").content))
    assert np.array_equal(np.asarray(shown.convert("RGB")), pixels)
    shot(page, tmp_path, "upload")


def test_the_stride_slider_changes_the_shape_and_the_grid(page, api, tmp_path):
    from featuremap.quantize import unpack

    before = lab_dims(page)
    slide(page, "#lab-stride", 3)
    page.wait_for_function("before => !document.getElementById('lab-maps-title').textContent"
                           ".includes(before)", arg=f"{before[1]} x {before[2]}")
    settle(page)
    d, h, w = lab_dims(page)
    body = lab_body(page)
    assert body["stride"] == [3]
    header, _ = unpack(api.post("/api/lab", json=body).content)
    assert [d, h, w] == header["result"]["shape"]
    assert (h, w) != before[1:] and h <= (before[1] + 2) // 3 + 1
    cost = [line for line in header["result"]["cost"].splitlines()
            if not line.startswith("note")]
    assert page.inner_text("#lab-cost").strip() == "\n".join(cost).strip()
    assert page.locator("#lab-grid .tile > canvas").first.evaluate(
        "c => [c.width, c.height]") == [w, h]
    assert page.input_value("#lab-stride") == "3"
    no_error(page)
    shot(page, tmp_path, "lab-stride")


def test_a_clicked_value_is_explained_with_the_apis_numbers(page, api, tmp_path):
    canvas = page.locator("#lab-grid .tile > canvas").nth(1)
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + 0.4 * box["width"], box["y"] + 0.6 * box["height"])
    page.wait_for_selector("#lab-explain .sum", timeout=60_000)
    settle(page)
    first = page.inner_text("#lab-explain .line >> nth=0")
    found = re.search(r"row (\d+), col (\d+)", first)
    assert found, first
    y, x = int(found.group(1)), int(found.group(2))
    explained = api.post("/api/lab", json={**lab_body(page), "at": [1, y, x]}).json()
    total = page.inner_text("#lab-explain .sum")
    shown = float(total.rsplit("=", 1)[1].strip().replace(",", ""))
    assert shown == pytest.approx(explained["value"], rel=1e-5, abs=1e-6)
    assert explained["map_name"] in first
    no_error(page)
    shot(page, tmp_path, "lab-explain")


def test_the_network_view_a_layer_and_a_channel(page, api, tmp_path):
    from featuremap.quantize import unpack

    page.click("#tabs button[data-view=net]")
    row = page.locator("#net-table tr[data-name='backbone.block2.conv1']")
    row.wait_for(timeout=60_000)
    settle(page)
    row.click()
    page.wait_for_function("() => document.getElementById('net-maps-title').textContent"
                           ".startsWith('backbone.block2.conv1')", timeout=60_000)
    settle(page)
    tiles = page.locator("#net-grid .tile")
    header, _ = unpack(api.post("/api/maps", json={"image": "scene-7", "model": "shapes",
                                                   "layer": "backbone.block2.conv1",
                                                   "top": 16}).content)
    assert tiles.count() == header["depth"] == 16
    third = header["channels"][2]
    assert f"ch {third}" in tiles.nth(2).inner_text()
    canvas = tiles.nth(2).locator(":scope > canvas")
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("c => document.getElementById('net-detail-title').textContent"
                           ".includes('channel ' + c)", arg=str(third), timeout=60_000)
    settle(page)
    no_error(page)
    shot(page, tmp_path, "network")


def test_what_if_breaks_a_layer(page, api, tmp_path):
    page.click("#tabs button[data-view=whatif]")
    page.wait_for_selector("#wi-layer option[value='backbone.block2.conv1']", state="attached",
                           timeout=60_000)
    settle(page)
    page.select_option("#wi-layer", "backbone.block2.conv1")
    settle(page)
    slide(page, "#wi-out", 24)
    page.wait_for_selector("#wi-broken", state="visible", timeout=60_000)
    settle(page)
    from featuremap.quantize import unpack

    header, _ = unpack(api.post("/api/whatif", json={
        "image": "scene-7", "model": "shapes", "layer": "backbone.block2.conv1",
        "out_channels": 24}).content)
    broken = header["whatif"]["broken"]
    assert broken and broken["layer"] in page.inner_text("#wi-broken")
    shot(page, tmp_path, "whatif")


def test_the_uses_view(page, api, tmp_path):
    page.click("#tabs button[data-view=uses]")
    page.wait_for_function("() => document.querySelectorAll('#use-top tr').length > 1",
                           timeout=60_000)
    settle(page, 0.6)
    best = api.post("/api/classify", json={"image": "scene-7", "model": "shapes"}).json()
    assert best["classification"]["top"][0]["name"] in page.inner_text("#use-top")
    no_error(page)
    shot(page, tmp_path, "uses")


def test_export_png(page, tmp_path):
    from PIL import Image

    settle(page)
    with page.expect_download(timeout=60_000) as got:
        page.click("#export")
    download = got.value
    assert download.suggested_filename == "featuremap-lab.png"
    path = tmp_path / download.suggested_filename
    download.save_as(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as picture:
        assert picture.width >= 300 and picture.height >= 200
