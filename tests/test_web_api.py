"""The explorer's HTTP API through FastAPI's TestClient: every route's answer equals the library's
own result (maps within one quantisation step), the forward-pass cache, superseded slider
requests, uploads (sizes, sniffed content, bombs), and that no client string reaches the file
system or picks a model outside the server's list."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from featuremap.web.app import ROUTES, create_app  # noqa: E402
from featuremap.web.server import LOCAL, make_session  # noqa: E402
from featuremap.web.state import Limits, Session  # noqa: E402
from webhelp import (  # noqa: E402
    as_json,
    asgi_request,
    decode,
    maps_of,
    one_line_error,
    png_bomb,
    png_bytes,
    within_a_step,
)

CONV = "backbone.block1.conv1"
CONV2 = "backbone.block2.conv1"


@pytest.fixture(scope="module")
def session() -> Session:
    return make_session()  # the bundled shapes model on generated scene 7


@pytest.fixture(scope="module")
def client(session) -> TestClient:
    return TestClient(create_app(session))


@pytest.fixture(scope="module")
def image(session):
    return session.image(session.start_image)


@pytest.fixture
def forwards(session):
    """How many times the model's forward ran (a pre-hook on the whole network)."""
    count = [0]
    handle = session.model.module.register_forward_pre_hook(
        lambda *_: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


def small_session(**limits) -> tuple[Session, TestClient]:
    s = make_session()
    s.limits = Limits(**limits)
    return s, TestClient(create_app(s))


# ------------------------------------------------------------------------------ info, images


def test_info_lists_what_the_server_offers(client, session):
    from featuremap.filters import list_filters
    from featuremap.samples import list_samples

    info = client.get("/api/info").json()
    assert info["model"] == "shapes" and info["models"][0] == "shapes"
    assert "resnet18" in info["models"] and info["image"] == session.start_image
    assert info["samples"] == list_samples() and info["filters"] == list_filters()
    assert info["limits"]["upload_bytes"] == session.limits.upload_bytes
    assert isinstance(info["computations"], int)


def test_every_route_is_listed(client):
    paths = {(m, r.path) for r in client.app.routes if hasattr(r, "methods")
             for m in r.methods if r.path.startswith("/api/")}
    listed = {tuple(k.split(" ", 1)) for k in ROUTES}
    assert {(m, p.replace("{image_id}.png", "{id}.png")) for m, p in paths} == listed


def test_image_png_is_the_decoded_image(client, image):
    from PIL import Image

    r = client.get(f"/api/images/{image.id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")),
                          image.pixels)


def test_sample_and_scene(client, session):
    r = client.post("/api/images/sample", json={"name": "chessboard"})
    assert r.json() == {"id": "sample-chessboard", "name": "sample:chessboard", "width": 200,
                        "height": 200, "has_truth": False}
    r = client.post("/api/images/scene", json={"seed": 11})
    assert r.json()["has_truth"] is True and r.json()["id"] == "scene-11"
    one_line_error(client.post("/api/images/sample", json={"name": "../../etc/passwd"}), 400)
    one_line_error(client.post("/api/images/scene", json={"seed": -1}), 422)


def test_layers_equal_layer_table(client, session):
    from featuremap.summary import layer_table

    got = client.get("/api/layers").json()
    expected = as_json({**layer_table(session.model).to_dict(),
                        "stages": [s.to_dict() for s in session.model.stages()]})
    assert {k: got[k] for k in expected} == expected


# ------------------------------------------------------------------------------ oracles


def test_lab_maps_equal_compute_maps(client, image):
    from featuremap.toy import compute_maps

    body = {"image": image.id, "filters": "sobel,gabor:4", "stride": [2, 1], "padding": [1],
            "dilation": [2], "padding_mode": "reflect", "short_side": 96}
    header, blocks = decode(client.post("/api/lab", json=body))
    expected = compute_maps(image.source, "sobel,gabor:4", stride=(2, 1), padding=1,
                            dilation=2, padding_mode="reflect", short_side=96)
    assert header["names"] == list(expected.names)
    assert [header["depth"], header["height"], header["width"]] == list(expected.maps.shape)
    within_a_step(maps_of(header, blocks[0]), expected.maps, header["ranges"])
    assert header["result"] == as_json(expected.to_dict())
    assert header["input"]["height"] == expected.input.shape[1]


def test_lab_defaults_and_depth(client, image):
    from featuremap.toy import compute_maps

    header, blocks = decode(client.post("/api/lab", json={
        "image": image.id, "filters": "random:8", "depth": 5, "channels": "per-channel"}))
    expected = compute_maps(image.source, "random:8", depth=5, channels="per-channel",
                            short_side=224)
    within_a_step(maps_of(header, blocks[0]), expected.maps, header["ranges"])


def test_lab_explain_equals_explain_value(client, image):
    from featuremap.toy import explain_value

    r = client.post("/api/lab", json={"image": image.id, "filters": "sobel", "at": [1, 5, 7],
                                      "padding": "same"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    expected = explain_value(image.source, "sobel", at=(1, 5, 7), padding="same",
                             short_side=224)
    assert r.json() == as_json(expected.to_dict())


def test_lab_on_a_layer_equals_layer_lab(client, session, image):
    from featuremap.value import explain, layer_lab

    header, blocks = decode(client.post("/api/lab", json={
        "image": image.id, "layer": CONV2, "stride": [2], "padding": [0], "depth": 6}))
    expected = layer_lab(session.model, image.source, layer=CONV2, stride=2, padding=0, depth=6)
    within_a_step(maps_of(header, blocks[0]), expected.maps, header["ranges"])
    assert header["result"] == as_json(expected.to_dict())
    r = client.post("/api/lab", json={"image": image.id, "layer": CONV2, "at": [3, 4, 5]})
    assert r.json() == as_json(explain(session.model, image.source, layer=CONV2,
                                       at=(3, 4, 5)).to_dict())


def test_maps_equal_extract(client, session, image):
    from featuremap.extraction import extract

    expected = extract(session.model, image.source, layers=[CONV2])[CONV2][0].numpy()
    header, blocks = decode(client.post("/api/maps", json={"image": image.id, "layer": CONV2,
                                                           "top": 6}))
    order = list(np.argsort(-expected.mean(axis=(1, 2)))[:6])
    assert header["channels"] == order
    within_a_step(maps_of(header, blocks[0]), expected[order], header["ranges"])
    assert header["mean"] == pytest.approx(expected.mean(axis=(1, 2))[order].tolist(), rel=1e-5)
    assert header["layer"]["name"] == CONV2 and header["input_shape"] == [1, 3, 64, 64]
    header, blocks = decode(client.post("/api/maps", json={"image": image.id, "layer": CONV2,
                                                           "channels": [31, 0, 7]}))
    within_a_step(maps_of(header, blocks[0]), expected[[31, 0, 7]], header["ranges"])
    header, _ = decode(client.post("/api/maps", json={"image": image.id, "layer": CONV2,
                                                      "top": 0}))
    assert header["depth"] == 32  # top 0: every channel


def test_overview_equals_extract(client, session, image):
    from featuremap.extraction import extract

    header, blocks = decode(client.post("/api/overview", json={"image": image.id,
                                                               "per_layer": 3}))
    names = [layer["name"] for layer in header["layers"]]
    assert names and len(blocks) == len(names)
    fm = extract(session.model, image.source, layers=names)
    for layer, blob in zip(header["layers"], blocks):
        data = fm[layer["name"]][0].numpy()
        within_a_step(maps_of(layer, blob), data[layer["channels"]], layer["ranges"])


def test_field_equals_trace_field(client, session, image):
    from featuremap.effective import trace_field

    header, blocks = decode(client.post("/api/field", json={
        "image": image.id, "layer": CONV2, "at": [10, 12], "map_channel": 3}))
    expected = trace_field(session.model, image.source, layer=CONV2, at=(10, 12), channel=3)
    assert header["field"] == as_json(expected.to_dict()) and header["text"] == str(expected)
    within_a_step(maps_of(header, blocks[0]), expected.erf[None], header["ranges"])


def test_field_with_three_numbers_is_explain(client, session, image):
    from featuremap.value import explain

    r = client.post("/api/field", json={"image": image.id, "layer": CONV, "at": [2, 30, 31]})
    assert r.json() == as_json(explain(session.model, image.source, layer=CONV,
                                       at=(2, 30, 31)).to_dict())


def test_whatif_equals_what_if(client, session, image):
    from featuremap.whatif import what_if

    header, blocks = decode(client.post("/api/whatif", json={
        "image": image.id, "layer": CONV2, "stride": [2], "out_channels": 24, "top": 4}))
    expected = what_if(session.model, CONV2, image=image.source, stride=2, out_channels=24)
    assert header["whatif"] == as_json(expected.to_dict()) and header["text"] == str(expected)
    data = expected.maps[expected.layer][0].numpy()
    within_a_step(maps_of(header, blocks[0]), data[header["channels"]], header["ranges"])
    assert header["depth"] == 4


def test_whatif_that_breaks_the_network(client, image):
    header, blocks = decode(client.post("/api/whatif", json={
        "image": image.id, "layer": "backbone.block4.conv1", "stride": [64]}))
    assert header["whatif"]["broken"] or header["whatif"]["shapes"]


def test_classify_equals_classify_and_grad_cam(client, session, image):
    from featuremap.tasks.cam import default_cam_layer, grad_cam
    from featuremap.tasks.topk import classify

    r = client.post("/api/classify", json={"image": image.id, "top": 3})
    assert r.status_code == 200
    got = r.json()
    expected = classify(session.model, image.source, top=3)
    assert got["classification"] == as_json(expected.to_dict())
    heat = grad_cam(session.model, image.source, layer=default_cam_layer(session.model))
    assert got["cam"] == as_json(heat.to_dict())


def test_segment_equals_the_library(client, session, image):
    from featuremap.tasks.clusters import cluster_segments
    from featuremap.tasks.segnets import segment

    header, blocks = decode(client.post("/api/segment", json={"image": image.id}))
    expected = segment(session.model, image.source)
    labels = np.frombuffer(blocks[0], np.uint8).reshape(header["height"], header["width"])
    assert np.array_equal(labels, expected.labels)
    assert header["truth"] is True and len(blocks) == 2
    assert np.array_equal(np.frombuffer(blocks[1], np.uint8).reshape(labels.shape), image.truth)
    header, blocks = decode(client.post("/api/segment", json={
        "image": image.id, "layers": ["backbone.block2"], "k": 3}))
    expected = cluster_segments(session.model, image.source, layers=["backbone.block2"], k=3)
    labels = np.frombuffer(blocks[0], np.uint8).reshape(header["height"], header["width"])
    assert np.array_equal(labels, expected.labels)


# ------------------------------------------------------------------------------ the cache


def test_switching_layers_reads_the_cache(client, session, forwards):
    # An overview's layer list comes from one shape pass per model and input size, kept by the
    # session: have it known (whichever tests ran before this one), then count the passes.
    decode(client.post("/api/overview", json={"image": session.add_scene(122).id}))
    forwards[0] = 0
    image = session.add_scene(123)
    before = session.computations
    for layer in (CONV, CONV2, "backbone.block3", "backbone.block4.relu2", CONV):
        decode(client.post("/api/maps", json={"image": image.id, "layer": layer, "top": 4}))
    decode(client.post("/api/overview", json={"image": image.id}))
    assert forwards[0] == 1  # one forward pass for five layers and the overview
    assert session.computations - before == 6
    assert session.cached_passes >= 1
    other = session.add_scene(124)
    decode(client.post("/api/maps", json={"image": other.id, "layer": CONV}))
    assert forwards[0] == 2


def test_the_cache_is_bounded():
    s, c = small_session(passes=2)
    for seed in (1, 2, 3):
        image = s.add_scene(seed)
        decode(c.post("/api/maps", json={"image": image.id, "layer": CONV}))
    assert s.cached_passes == 2
    s.limits = Limits(pass_bytes=1)  # the newest pass is kept whatever its size
    decode(c.post("/api/maps", json={"image": s.add_scene(4).id, "layer": CONV}))
    assert s.cached_passes == 1


def test_images_are_bounded():
    s, c = small_session(images=3)
    ids = [s.add_scene(seed).id for seed in range(5)]
    assert [c.get(f"/api/images/{i}.png").status_code for i in ids] == [404, 404, 200, 200, 200]
    s.limits = Limits(image_bytes=64 * 64 * 3 * 2)
    s.add_scene(99)
    assert [c.get(f"/api/images/{i}.png").status_code for i in ids[-2:]] == [404, 200]


def test_models_are_bounded(monkeypatch):
    import featuremap.zoo

    s = make_session()
    s.limits = Limits(models=1)
    loaded = []
    real = featuremap.zoo.load_model

    def counting(name, **kwargs):
        loaded.append((name, kwargs.get("weights")))
        return real("shapes", weights="DEFAULT")  # any listed name, the bundled network

    monkeypatch.setattr(featuremap.zoo, "load_model", counting)
    s.get_model("resnet18")
    s.get_model("resnet18")
    assert loaded == [("resnet18", "random")]  # loaded once, never downloaded
    s.get_model("alexnet")
    s.get_model("resnet18")
    assert [n for n, _ in loaded] == ["resnet18", "alexnet", "resnet18"]


# ------------------------------------------------------------------------------ supersession


def _follow(image_id: str, seq: int) -> dict:
    return {"image": image_id, "filters": "sobel", "stride": [1 + seq % 3], "channel": "stride",
            "seq": seq}


def test_an_older_seq_is_409_without_computing(client, session, image):
    before = session.computations
    ok = client.post("/api/lab", json=_follow(image.id, 5), headers={"x-client": "tab-a"})
    assert ok.status_code == 200 and session.computations == before + 1
    r = client.post("/api/lab", json=_follow(image.id, 4), headers={"x-client": "tab-a"})
    assert "superseded" in one_line_error(r, 409)
    assert session.computations == before + 1
    # another tab, another channel, or no client id: not superseded
    for headers, body in [({"x-client": "tab-b"}, _follow(image.id, 1)),
                          ({"x-client": "tab-a"}, {**_follow(image.id, 1), "channel": "pad"}),
                          ({}, _follow(image.id, 1))]:
        assert client.post("/api/lab", json=body, headers=headers).status_code == 200


def test_a_request_waiting_for_the_model_is_dropped_when_a_newer_one_arrives(session, image):
    results = {}

    def send(seq):
        c = TestClient(create_app(session))
        results[seq] = c.post("/api/lab", json=_follow(image.id, seq),
                              headers={"x-client": "dragger"})

    def ticketed(seq):
        deadline = time.monotonic() + 10
        while session._latest.get(("dragger", "stride"), -1) < seq:
            assert time.monotonic() < deadline
            time.sleep(0.005)

    with session.lock:  # the model is busy
        before = session.computations
        first = threading.Thread(target=send, args=(100,))
        first.start()
        ticketed(100)
        second = threading.Thread(target=send, args=(101,))
        second.start()
        ticketed(101)
    first.join(30)
    second.join(30)
    one_line_error(results[100], 409)
    assert results[101].status_code == 200
    assert session.computations == before + 1


# ------------------------------------------------------------------------------ uploads


def test_upload_is_sniffed_not_named(client, session):
    pixels = (np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(40, 30, 3)
    r = client.post("/api/images", content=png_bytes(pixels),
                    headers={"x-filename": "holiday.jpg", "content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["width"] == 30 and got["height"] == 40 and got["name"] == "holiday.jpg"
    assert np.array_equal(session.image(got["id"]).pixels, pixels)
    message = one_line_error(client.post("/api/images", content=b"hello, not an image\n" * 9,
                                         headers={"x-filename": "cat.png"}), 415)
    assert "not an image" in message


def test_upload_formats_are_the_common_ones(client):
    from PIL import Image

    for fmt in ("JPEG", "WEBP", "GIF", "BMP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (9, 7), (200, 10, 10)).save(buf, format=fmt)
        r = client.post("/api/images", content=buf.getvalue())
        assert r.status_code == 200 and r.json()["width"] == 9, (fmt, r.text)
    buf = io.BytesIO()
    Image.new("RGB", (9, 7)).save(buf, format="PCX")  # an image, in a rarer format
    one_line_error(client.post("/api/images", content=buf.getvalue()), 415)
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    one_line_error(client.post("/api/images", content=postscript, headers={
        "x-filename": "a.eps"}), 415)


def test_upload_errors(client):
    one_line_error(client.post("/api/images", content=b""), 400)
    png = png_bytes(np.zeros((50, 60, 3), np.uint8) + 7)
    one_line_error(client.post("/api/images", content=png[: len(png) // 2]), (400, 415))
    one_line_error(client.post("/api/images", content=png[:20]), (400, 415))
    rng = np.random.default_rng(0)
    one_line_error(client.post("/api/images", content=rng.bytes(5000)), 415)


def test_a_decompression_bomb_is_refused_before_decoding(client):
    import tracemalloc

    bomb = png_bomb(50_000, 50_000)  # 2.5 billion pixels in a few kB
    assert len(bomb) < 20_000
    tracemalloc.start()
    try:
        r = client.post("/api/images", content=bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "pixels" in one_line_error(r, 413)
    assert peak < 16 * 2**20


def test_pixels_are_capped():
    s, c = small_session(upload_pixels=10_000)
    message = one_line_error(c.post("/api/images", content=png_bytes(
        np.zeros((101, 100, 3), np.uint8))), 413)
    assert "10,100" in message and "10,000" in message
    assert c.post("/api/images", content=png_bytes(np.zeros((100, 100, 3), np.uint8))
                  ).status_code == 200


def test_too_many_bytes_are_refused_before_reading_them_all():
    s, c = small_session(upload_bytes=50_000)
    app = c.app
    chunks = [b"\0" * 10_000] * 100  # 1 MB offered in 10 kB pieces, no length declared
    status, body, pulled = asgi_request(app, "POST", "/api/images", chunks)
    assert status == 413 and pulled <= 6, (status, pulled)
    assert json.loads(body)["error"].startswith("the upload is over the limit")
    # a declared length over the limit: refused before any byte is read
    status, body, pulled = asgi_request(app, "POST", "/api/images", chunks,
                                        headers=[("content-length", "1000000")])
    assert status == 413 and pulled == 0
    # the same for JSON bodies, under their own limit
    status, body, pulled = asgi_request(app, "POST", "/api/lab", [b" " * 100_000] * 100)
    assert status == 413 and pulled <= 11, (status, pulled)
    status, body, pulled = asgi_request(app, "POST", "/api/lab", [b"{}"],
                                        headers=[("content-length", str(2**40))])
    assert status == 413 and pulled == 0


def test_a_cut_off_upload_is_a_one_line_error(client):
    png = png_bytes(np.zeros((30, 30, 3), np.uint8))
    status, body, _ = asgi_request(client.app, "POST", "/api/images", [png[:100]],
                                   disconnect=True)
    assert status == 400 and "cut off" in json.loads(body)["error"]


# ------------------------------------------------------------------------------ no client paths


MARK = "fm-zz-mark"
HOSTILE = [f"../../{MARK}/etc/passwd", f"/tmp/{MARK}.pt", f"{MARK}.png", f"C:\\{MARK}",
           f"file:///{MARK}", f"sample:../{MARK}", f"~/{MARK}", f"{MARK}\x00.png",
           f"https://example.com/{MARK}.pt"]


@pytest.fixture
def touched(monkeypatch):
    """Everything that opens, lists or loads a path with the marker in it, while on."""
    import torch

    import featuremap.zoo

    seen: list[str] = []
    on = [True]

    def hook(event, args):
        if on[0] and event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove",
                               "os.rename", "shutil.copyfile", "os.chdir", "urllib.Request",
                               "socket.connect"):
            if any(MARK in str(a) for a in args):
                seen.append(f"{event} {args!r}")

    sys.addaudithook(hook)
    try:
        open(f"/nonexistent/{MARK}")  # noqa: SIM115 - the hook sees even a failed open
    except OSError:
        pass
    assert seen, "the audit hook is not called"
    seen.clear()
    real_load = featuremap.zoo.load_model
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(f"torch.load {a!r}"))
    monkeypatch.setattr(featuremap.zoo, "load_model", lambda name, **k: (
        seen.append(f"load_model {name!r}") if MARK in str(name) else real_load(name, **k)))
    yield seen
    on[0] = False


def test_no_client_string_reaches_the_file_system(client, image, touched):
    for text in HOSTILE:
        responses = [
            client.post("/api/maps", json={"image": text, "layer": CONV}),
            client.post("/api/maps", json={"image": image.id, "layer": text}),
            client.post("/api/maps", json={"image": image.id, "layer": CONV, "model": text}),
            client.post("/api/lab", json={"image": image.id, "filters": text}),
            client.post("/api/lab", json={"image": image.id, "layer": CONV, "model": text}),
            client.post("/api/lab", json={"image": image.id, "layer": text}),
            client.post("/api/field", json={"image": image.id, "layer": text, "at": [1, 1]}),
            client.post("/api/whatif", json={"image": image.id, "layer": text}),
            client.post("/api/overview", json={"image": image.id, "model": text}),
            client.post("/api/classify", json={"image": image.id, "cam_layer": text}),
            client.post("/api/segment", json={"image": image.id, "layers": [text]}),
            client.post("/api/images/sample", json={"name": text}),
            client.get("/api/layers", params={"model": text}),
            client.get(f"/api/images/{quote(text, safe='')}.png"),
        ]
        for r in responses:
            one_line_error(r)
        r = client.post("/api/images", content=png_bytes(np.zeros((8, 8, 3), np.uint8)),
                        headers={"x-filename": text.encode("utf-8")})
        assert r.status_code == 200 and MARK not in r.json()["id"]
    assert touched == []


def test_image_ids_are_made_by_the_server(client):
    r = client.post("/api/images", content=png_bytes(np.ones((8, 9, 3), np.uint8)),
                    headers={"x-filename": "../../../etc/passwd"})
    got = r.json()
    assert got["id"].isalnum() and len(got["id"]) == 16
    assert got["name"] == "../../../etc/passwd"  # shown, never used as a path
    for bad in ["nope", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "scene-7%00"]:
        r = client.get(f"/api/images/{bad}.png")
        one_line_error(r, (400, 404, 422))
    one_line_error(client.post("/api/maps", json={"image": "../scene-7", "layer": CONV}), 404)


def test_the_model_comes_from_the_servers_list(client, session):
    for name in ["/tmp/model.pt", "./resnet18.pth", "resnet18.safetensors", "timm/resnet18",
                 "hf-hub:org/model", "https://example.com/m.pt", "RESNET18 "]:
        message = one_line_error(client.get("/api/layers", params={"model": name}), 400)
        assert "This explorer serves" in message
    table = client.get("/api/layers", params={"model": "resnet18"}).json()
    assert table["model"] == "resnet18"
    assert session.get_model("resnet18").weights in ("random", "random (untrained)") or \
        "random" in str(session.get_model("resnet18").weights)


# ------------------------------------------------------------------------------ errors


BAD = [
    ("get", "/api/nothing", {}, 404),
    ("put", "/api/lab", {}, 405),
    ("post", "/api/lab", {"content": b"{not json"}, 422),
    ("post", "/api/lab", {"content": b'{"image": "x"}', "headers": {"content-type": "text/plain"}},
     422),
    ("post", "/api/lab", {"json": {"image": "scene-7", "stride": [0]}}, 400),
    ("post", "/api/lab", {"json": {"image": "scene-7", "stride": [-1]}}, 422),
    ("post", "/api/lab", {"json": {"image": "scene-7", "stride": "2"}}, 422),
    ("post", "/api/lab", {"json": {"image": "scene-7", "surprise": 1}}, 422),
    ("post", "/api/lab", {"json": {"image": "scene-7", "filters": "nonsense"}}, 400),
    ("post", "/api/lab", {"json": {"image": "scene-7", "dilation": [1000]}}, 400),
    ("post", "/api/lab", {"content": b'{"image": "scene-7", "depth": NaN}',
                          "headers": {"content-type": "application/json"}}, 422),
    ("post", "/api/maps", {"json": {"image": "scene-7", "layer": "classifier.fc"}}, 400),
    ("post", "/api/maps", {"json": {"image": "scene-7", "layer": "segmenter"}}, 400),
    ("post", "/api/maps", {"json": {"image": "scene-7", "layer": "layer9"}}, 400),
    ("post", "/api/maps", {"json": {"image": "scene-7", "layer": CONV, "channels": [16]}}, 400),
    ("post", "/api/maps", {"json": {"image": "no-such", "layer": CONV}}, 404),
    ("post", "/api/field", {"json": {"image": "scene-7", "layer": CONV, "at": [64, 0]}}, 400),
    ("post", "/api/field", {"json": {"image": "scene-7", "layer": "segmenter.head",
                                     "at": [0, 0]}}, 400),
    ("post", "/api/whatif", {"json": {"image": "scene-7", "layer": "classifier.fc"}}, 400),
    ("post", "/api/whatif", {"json": {"image": "scene-7", "layer": CONV, "padding": "same",
                                      "stride": [2]}}, 400),
    ("post", "/api/classify", {"json": {"image": "scene-7", "cam_layer": "classifier.fc"}}, 400),
    ("post", "/api/segment", {"json": {"image": "scene-7", "layers": ["classifier.fc"]}}, 400),
    ("post", "/api/images/scene", {"json": {"seed": 2**31}}, 422),
    ("get", "/api/images/" + "a" * 81 + ".png", {}, 422),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), BAD,
                         ids=[f"{m} {p[:30]} {s}" for m, p, _, s in BAD])
def test_every_error_is_one_line_of_json(client, method, path, kwargs, status):
    one_line_error(getattr(client, method)(path, **kwargs), status)


def test_a_library_error_with_newlines_stays_one_line(client, monkeypatch):
    import featuremap.toy
    from featuremap.errors import ConfigError

    def fails(*_a, **_k):
        raise ConfigError("first line\nsecond line\x1b[31m " + "x" * 5000)

    monkeypatch.setattr(featuremap.toy, "compute_maps", fails)
    line = one_line_error(client.post("/api/lab", json={"image": "scene-7"}), 400)
    assert line.startswith("first line") and "\\x1b" in line and line.endswith("...")


def test_an_unexpected_failure_is_a_json_500(session, monkeypatch):
    import featuremap.toy

    monkeypatch.setattr(featuremap.toy, "compute_maps", lambda *a, **k: 1 / 0)
    c = TestClient(create_app(session), raise_server_exceptions=False)
    r = c.post("/api/lab", json={"image": "scene-7"})
    assert r.status_code == 500 and r.json() == {
        "error": "internal error: ZeroDivisionError: division by zero"}


# ------------------------------------------------------------------------------ other sites


def test_other_sites_and_hosts_are_refused(session):
    app = create_app(session, hosts=LOCAL)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert c.get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/info").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8000").get("/api/info").status_code == 200
    one_line_error(TestClient(app, base_url="http://evil.example").get("/api/info"), 403)
    one_line_error(c.post("/api/images", content=b"x", headers={
        "origin": "http://evil.example"}), 403)
    assert c.get("/api/info", headers={"origin": "http://localhost:8000"}).status_code == 200
