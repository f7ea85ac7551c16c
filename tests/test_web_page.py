"""The explorer's page: static files, the routes it adds, and the page in a real browser.

The browser tests drive headless Chromium through Playwright and are skipped where either is
missing (set FEATUREMAP_CHROMIUM to a Chromium executable Playwright did not install), unless
``FEATUREMAP_REQUIRE_BROWSER=1`` (CI sets it): then a missing browser fails them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from importlib import resources

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from featuremap.web.app import create_app  # noqa: E402
from featuremap.web.server import make_session  # noqa: E402

STATIC = resources.files("featuremap.web") / "static"
FILES = ("index.html", "app.js", "style.css", "colormaps.js")


@pytest.fixture(scope="module")
def served():
    session = make_session()
    return session, TestClient(create_app(session))


def test_static_files_are_served_and_load_nothing_from_elsewhere(served):
    _, client = served
    page = client.get("/")
    assert page.status_code == 200
    for name in FILES[1:]:
        assert f"/static/{name}" in page.text
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 1000
    for name in FILES:
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "@import" not in text and "cdn" not in text.lower(), name


def test_colour_tables_match_matplotlib():
    import matplotlib

    text = (STATIC / "colormaps.js").read_text(encoding="utf-8")
    for name in ("viridis", "RdBu_r"):
        values = re.search(rf'"{re.escape(name)}": new Uint8Array\(\[([0-9,]+)\]\)', text).group(1)
        table = np.array(values.split(","), dtype=int).reshape(256, 3)
        want = (matplotlib.colormaps[name].resampled(256)(range(256))[:, :3] * 255).round()
        np.testing.assert_array_equal(table, want.astype(int))


def test_model_input_is_the_picture_the_model_sees(served):
    from PIL import Image

    session, client = served
    r = client.get(f"/api/input/{session.start_image}.png", params={"model": "shapes"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    from featuremap.images import to_uint8_hwc

    sample = client.post("/api/images/sample", json={"name": "chelsea"}).json()["id"]
    picture = np.asarray(Image.open(io.BytesIO(client.get(f"/api/input/{sample}.png").content)))
    want = to_uint8_hwc(session.model.preprocess.load("sample:chelsea"))
    np.testing.assert_array_equal(picture, want)  # resized and cropped as the model's input


def test_model_input_refuses_unknown_images_and_models(served):
    session, client = served
    assert client.get("/api/input/nothing.png").status_code == 404
    r = client.get(f"/api/input/{session.start_image}.png", params={"model": "/etc/passwd"})
    assert r.status_code == 400 and "error" in r.json()


def test_layer_table_says_which_weights(served):
    _, client = served
    table = client.get("/api/layers").json()
    assert "shapes.safetensors" in table["weights"]


# ------------------------------------------------------------------------------ the browser

def _chromium() -> str | None:
    return os.environ.get("FEATUREMAP_CHROMIUM") or shutil.which("chromium") or None


def _no_browser(why: str):
    if os.environ.get("FEATUREMAP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FEATUREMAP_REQUIRE_BROWSER=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser_page():
    try:
        from playwright import sync_api
    except ImportError:
        _no_browser("playwright is not installed (pip install playwright)")
    from featuremap.web.server import explore

    handle = explore()  # the bundled model and generated scene 7 on a port of its own
    try:
        with sync_api.sync_playwright() as p:
            try:
                browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            except Exception as err:  # no browser Playwright can start here
                _no_browser(f"no Chromium to drive: {str(err).splitlines()[0]}")
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(handle.url)
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=60_000)
            yield handle.session, page, errors
            browser.close()
    finally:
        handle.stop()


def _settle(page) -> None:
    time.sleep(0.3)
    page.wait_for_function("document.body.dataset.busy !== '1'", timeout=60_000)


def _lab(page) -> None:
    """Show the lab: the tests share one page, and another may have left another view open."""
    page.click("#tabs button[data-view=lab]")
    _settle(page)
    page.wait_for_selector("#lab-grid .tile > canvas", state="visible", timeout=30_000)


def test_page_draws_the_lab_and_a_quick_drag_sends_no_backlog(browser_page):
    session, page, errors = browser_page
    _lab(page)
    assert page.locator("#lab-grid .tile > canvas").count() == 6  # sobel,gabor:4
    before = session.computations
    page.evaluate("""() => new Promise((done) => {
        const s = document.getElementById("lab-stride"); let i = 0;
        const tick = () => { s.value = 1 + (i % 4); s.dispatchEvent(new Event("input"));
                             if (++i < 50) setTimeout(tick, 20); else done(); };
        tick(); })""")
    _settle(page)
    assert session.computations - before <= 8
    # the last value wins: 50 events end on stride 2
    assert "// 2 + 1 = 103" in page.inner_text("#lab-cost")
    assert not errors


def test_clicking_a_value_explains_it_and_errors_show_in_one_line(browser_page):
    _, page, errors = browser_page
    _lab(page)
    canvas = page.locator("#lab-grid .tile > canvas").nth(0)
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    _settle(page)
    assert "sum of products" in page.inner_text("#lab-explain")
    page.fill("#lab-filters", "sobel,gabr:4")
    time.sleep(0.5)
    _settle(page)
    assert page.is_visible("#error") and "Did you mean 'gabor'" in page.inner_text("#error")
    assert page.locator("#lab-grid .tile > canvas").count() == 6  # the maps stay
    page.fill("#lab-filters", "sobel,gabor:4")
    time.sleep(0.5)
    _settle(page)
    assert not page.is_visible("#error")
    assert not errors


def test_every_view_draws_and_exports(browser_page):
    _, page, errors = browser_page
    for view, ready in [("net", "#net-grid .tile"), ("whatif", "#wi-shapes tr"),
                        ("uses", "#use-top tr")]:
        page.click(f"#tabs button[data-view={view}]")
        _settle(page)
        page.wait_for_selector(ready, timeout=30_000)
        assert f"v={view}" in page.evaluate("location.hash")
        with page.expect_download() as download:
            page.click("#export")
        assert download.value.suggested_filename == f"featuremap-{view}.png"
    assert not errors
