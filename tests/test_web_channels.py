"""The explorer's Channels view: its API against the library (the served atlas equals
``channel_atlas`` called with the same settings, pictures included), its progress, its refusals
(one-line JSON, never a 500), one computation at a time, cancel; the data checked at start-up
(``featuremap explore --data``); and the page in a real Chromium: Compute, progress, the table,
sorting by a heading, and the message without data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from clirun import run_error  # noqa: E402
from featuremap.atlas import channel_atlas  # noqa: E402
from featuremap.atlas.page import image_uri  # noqa: E402
from featuremap.bundled.scenes import save_dataset  # noqa: E402
from featuremap.errors import ConfigError  # noqa: E402
from featuremap.web.app import create_app  # noqa: E402
from featuremap.web.bodies import MAX_CHANNELS  # noqa: E402
from featuremap.web.server import LOCAL, make_session  # noqa: E402
from webhelp import as_json, chromium, one_line_error  # noqa: E402

LAYER = "backbone.block3"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("channels") / "pairs", 24, seed=3,
                        layout="segmentation")


@pytest.fixture(scope="module")
def session(pairs):
    return make_session(data=pairs)  # the bundled model; the data checked


@pytest.fixture(scope="module")
def client(session):
    return TestClient(create_app(session))


def finish(client, timeout: float = 60.0) -> tuple[dict, list[tuple[str, int, int]]]:
    """Poll the progress until the computation ends: its last status and what was seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        status = client.get("/api/channels/progress").json()
        seen.append((status["stage"], status["done"], status["total"]))
        if status["state"] != "running":
            return status, seen
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def without_seconds(info: dict) -> dict:
    """An atlas's to_dict() without its timings."""
    vis = info["visualization"]
    return {**{k: v for k, v in info.items() if k != "seconds"},
            "visualization": vis and {k: v for k, v in vis.items()
                                      if k != "seconds_per_channel"}}


# --------------------------------------------------------------------------- the oracle


def test_the_served_atlas_is_the_librarys(client, session, pairs):
    body = {"layer": LAYER, "channels": "9,0-2,40", "k": 4, "visualise": True, "steps": 6}
    started = client.post("/api/channels", json=body)
    assert started.status_code == 202, started.text
    assert started.json()["settings"]["channels"] == [9, 0, 1, 2, 40]
    status, seen = finish(client)
    assert status["state"] == "done" and status["error"] is None
    assert status["done"] == status["total"] > 0
    stages = [s for s, _, _ in seen if s is not None]
    assert list(dict.fromkeys(stages)) == [s for s in ["maps", "patches", "visualisation"]
                                           if s in stages]
    got = client.get("/api/channels/result", params={"job": status["job"]}).json()

    atlas = channel_atlas(session.model, pairs, layer=LAYER, channels=[9, 0, 1, 2, 40], k=4,
                          steps=6)
    expected = as_json(atlas.to_dict())
    assert without_seconds(got["atlas"]) == without_seconds(expected)
    rows = got["atlas"]["rows"]
    assert [r["channel"] for r in rows] == sorted([9, 0, 1, 2, 40])
    assert [[p["name"] for p in r["patches"]] for r in rows] == \
        [[p.name for p in atlas.patches.patches[atlas.channels.index(r["channel"])]]
         for r in rows]
    for picture, i in zip(got["pictures"], range(len(atlas))):
        assert picture["channel"] == atlas.channels[i]
        assert picture["patches"] == [image_uri(p.crop) for p in atlas.patches.patches[i]]
        assert picture["rendered"] == image_uri(atlas.visualization.images[i], largest=128)


def test_a_store_serves_its_whole_layers_only(session, pairs, tmp_path):
    from featuremap.store import extract_dataset

    store = extract_dataset(session.model, pairs, layers=[LAYER], out=tmp_path / "s.zarr",
                            batch_size=8).path
    served = make_session(session.model, data=store)
    assert served.data.kind == "store" and served.data.layers == (LAYER,)
    client = TestClient(create_app(served))
    assert client.get("/api/info").json()["data"]["layers"] == [LAYER]
    line = one_line_error(client.post("/api/channels", json={"layer": "backbone.block2"}), 400)
    assert "backbone.block3" in line
    assert client.post("/api/channels", json={"layer": LAYER, "channels": "5,1",
                                              "visualise": False}).status_code == 202
    status, _ = finish(client)
    assert status["state"] == "done" and status["stages"] == ["maps", "patches"]
    got = client.get("/api/channels/result").json()
    expected = channel_atlas(session.model, store, layer=LAYER, channels=[5, 1], k=9,
                             visualize=False)
    assert without_seconds(got["atlas"]) == without_seconds(as_json(expected.to_dict()))
    assert [p["rendered"] for p in got["pictures"]] == [None, None]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("body, status, match", [
    ({"layer": "backbone.blok3"}, 400, "Did you mean 'backbone.block3'"),
    ({"layer": "classifier.fc"}, 400, "feature maps"),
    ({"layer": LAYER, "channels": "60-64"}, 400, "channel 64 is outside the 64 channels"),
    ({"layer": "backbone.block4", "channels": "all"}, 400, "has 128 channels; at most 64"),
    ({"layer": LAYER, "channels": "70"}, 400, "channel 70 is outside"),
    ({"layer": LAYER, "channels": "3,x"}, 400, "'x' is not a channel number"),
    ({"layer": LAYER, "channels": "8-2"}, 400, "runs backwards"),
    ({"layer": LAYER, "channels": "-1"}, 400, "not a channel number"),
    ({"layer": LAYER, "channels": "\u00b2,\u0663"}, 400, "not a channel number"),
    ({"layer": LAYER, "channels": "1" * 30}, 400, "not a channel number"),
    ({"layer": LAYER, "channels": ","}, 400, "channels is empty"),
    ({"layer": "backbone.block4", "channels": "0-99"}, 400, f"at most {MAX_CHANNELS}"),
    ({"layer": LAYER, "channels": "1" * 400}, 422, "channels"),
    ({"layer": LAYER, "k": 0}, 422, "k:"),
    ({"layer": LAYER, "k": 33}, 422, "k:"),
    ({"layer": LAYER, "steps": 0}, 422, "steps:"),
    ({"layer": LAYER, "steps": 513}, 422, "steps:"),
    ({"layer": LAYER, "visualise": "yes"}, 422, "visualise"),
    ({"layer": LAYER, "size": 64}, 422, "size"),
    ({"channels": "0"}, 422, "layer"),
    ({"layer": LAYER, "model": "resnet9000"}, 400, "Unknown model"),
])
def test_bad_fields_are_one_line_errors_and_start_nothing(client, body, status, match):
    before = client.get("/api/channels/progress").json()["job"]
    line = one_line_error(client.post("/api/channels", json=body), status)
    assert match in line, line
    assert client.get("/api/channels/progress").json()["job"] == before


def test_one_computation_at_a_time_and_cancel_stops_it(client):
    long = {"layer": "backbone.block4", "channels": f"0-{MAX_CHANNELS - 1}", "steps": 512}
    assert client.post("/api/channels", json=long).status_code == 202
    line = one_line_error(client.post("/api/channels", json={"layer": LAYER}), 409)
    assert "cancel it first" in line
    one_line_error(client.get("/api/channels/result"), 409)
    began = time.monotonic()
    status = client.post("/api/channels/cancel").json()
    if status["state"] == "running":
        status, _ = finish(client, timeout=20)
    assert status["state"] == "cancelled", status
    assert time.monotonic() - began < 20
    assert not (status["stage"] == "visualisation" and status["done"] == status["total"])
    line = one_line_error(client.get("/api/channels/result"), 404)
    assert "cancelled" in line
    assert client.post("/api/channels/cancel").json()["state"] == "cancelled"  # nothing runs
    assert client.post("/api/channels", json={"layer": LAYER, "channels": "0",
                                              "visualise": False}).status_code == 202
    assert finish(client)[0]["state"] == "done"
    one_line_error(client.get("/api/channels/result", params={"job": "nope"}), 404)


def test_without_data_the_view_says_how_to_give_it():
    client = TestClient(create_app(make_session()))
    assert client.get("/api/info").json()["data"] is None
    line = one_line_error(client.post("/api/channels", json={"layer": LAYER}), 400)
    assert "featuremap explore --data FOLDER" in line
    assert client.get("/api/channels/progress").json()["state"] == "idle"
    assert "no channels computed yet" in one_line_error(client.get("/api/channels/result"), 404)


def test_the_guards_cover_the_channel_routes(session):
    client = TestClient(create_app(session, hosts=LOCAL), base_url="http://127.0.0.1")
    foreign = client.post("/api/channels", json={"layer": LAYER},
                          headers={"Origin": "http://evil.example"})
    assert "another site" in one_line_error(foreign, 403)
    one_line_error(client.post("/api/channels/cancel", headers={"Host": "evil.example"}), 403)
    big = client.post("/api/channels", content=b"{" + b" " * 2**21 + b"}",
                      headers={"Content-Type": "application/json"})
    one_line_error(big, 413)


# --------------------------------------------------------------------------- start-up


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory, pairs):
    from featuremap.store import extract_dataset
    from featuremap.zoo import load_model

    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "text").mkdir()
    (root / "text" / "notes.txt").write_text("no pictures here")
    with pytest.warns(UserWarning, match="random weights"):
        other = load_model("shapes", weights="random")
    store = extract_dataset(other, pairs, layers=[LAYER], out=root / "other.zarr").path
    return {"missing": (root / "nothere", "does not exist"),
            "empty": (root / "empty", "holds no files"),
            "text": (root / "text", "holds no image"),
            "store": (store, "was not made with this model")}


@pytest.mark.parametrize("case", ["missing", "empty", "text", "store"])
def test_data_that_cannot_serve_is_refused_at_start_up(bad_data, case, shapes, capsys):
    path, match = bad_data[case]
    with pytest.raises(ConfigError, match=match):
        make_session(shapes, data=path)
    line = run_error(["explore", "--no-browser", "--data", str(path)], capsys)
    assert match in line


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_the_page_computes_shows_progress_and_sorts(browser, pairs):
    from featuremap.web.server import explore

    handle = explore(data=pairs)
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(handle.url)
        page.wait_for_selector("body[data-ready='1']", state="attached", timeout=30_000)
        own_title = page.get_attribute("#upload", "title")
        page.click("#tabs button[data-view=channels]")
        page.wait_for_selector("#ch-layer option[value='backbone.block4']", state="attached")
        # the image controls do nothing here: disabled, saying why; back as they were elsewhere
        assert page.is_disabled("#image") and page.is_disabled("#upload")
        assert "--data" in page.get_attribute("#upload", "title")
        page.click("#tabs button[data-view=lab]")
        assert page.is_enabled("#upload") and page.get_attribute("#upload", "title") == own_title
        page.click("#tabs button[data-view=channels]")
        page.select_option("#ch-layer", LAYER)
        page.fill("#ch-channels", "0-3")
        page.fill("#ch-steps", "8")
        page.click("#ch-compute")
        page.wait_for_selector("#ch-progress[data-state=running]", timeout=10_000)
        assert page.inner_text("#ch-stages").count("\n") >= 2  # three stages listed
        page.wait_for_selector("#ch-table tbody tr", timeout=60_000)
        assert page.get_attribute("#ch-progress", "data-state") == "done"
        assert page.locator("#ch-table tbody tr").count() == 4
        assert page.locator("#ch-table tbody tr").first.locator("img.p").count() == 9

        with httpx.Client(base_url=handle.url, timeout=30) as api:
            rows = api.get("/api/channels/result").json()["atlas"]["rows"]
        order = lambda: [int(c) for c in page.eval_on_selector_all(  # noqa: E731
            "#ch-table tbody tr", "rows => rows.map(r => r.dataset.channel)")]
        assert order() == [0, 1, 2, 3]
        page.click("#ch-table th[data-key=iou]")
        by_iou = [r["channel"] for r in sorted(rows, key=lambda r: (-r["iou"], r["channel"]))]
        assert order() == by_iou
        assert "IoU, largest first" in page.inner_text("#ch-shown")
        page.click("#ch-table th[data-key=iou]")
        assert order() == [r["channel"] for r in sorted(rows, key=lambda r: (r["iou"],
                                                                             r["channel"]))]
        page.wait_for_function("location.hash.includes('cho=iou')")
        title = page.locator("#ch-table tbody tr").first.locator("img.p").first
        assert ": value " in title.get_attribute("title")
        assert page.locator("#error").is_hidden(), page.inner_text("#error")
        with page.expect_download() as download:
            page.click("#export")
        assert download.value.suggested_filename == "featuremap-channels.png"
        assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        page.goto(handle.url.rstrip("/") + "/#v=channels&chc=0-3")  # a reload shows the result
        page.wait_for_selector("#ch-table tbody tr", timeout=30_000)
        assert page.locator("#ch-table tbody tr").count() == 4
    finally:
        context.close()
        handle.stop()
    assert errors == [], errors


def test_the_page_without_data_says_how_to_start(browser):
    from featuremap.web.server import explore

    handle = explore()
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(handle.url.rstrip("/") + "/#v=channels")
        page.wait_for_selector("#ch-nodata", state="visible", timeout=30_000)
        assert "featuremap explore --data FOLDER" in page.inner_text("#ch-nodata")
        assert page.is_disabled("#ch-compute")
    finally:
        context.close()
        handle.stop()
    assert errors == [], errors
