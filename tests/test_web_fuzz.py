"""The explorer's server under hostile and heavy use: 1,000 fuzzed requests across every route
(no 500, every refusal one line of JSON), 8 clients at once on a real server (no 500, memory
flat after a warm-up), and Ctrl-C stopping ``featuremap explore`` at once."""

from __future__ import annotations

import gc
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from clirun import run  # noqa: E402
from featuremap.web.app import create_app  # noqa: E402
from featuremap.web.server import explore, make_session  # noqa: E402
from webhelp import one_line_error, png_bytes  # noqa: E402

CONV = "backbone.block1.conv1"
IMAGE = "scene-7"

VALID = {
    "/api/lab": {"image": IMAGE, "filters": "sobel", "stride": [2], "padding": [1],
                 "dilation": [1], "short_side": 32, "channel": "stride", "seq": 1},
    "/api/maps": {"image": IMAGE, "layer": CONV, "top": 4, "channels": None},
    "/api/overview": {"image": IMAGE, "per_layer": 2},
    "/api/field": {"image": IMAGE, "layer": CONV, "at": [3, 4], "map_channel": 1},
    "/api/whatif": {"image": IMAGE, "layer": CONV, "stride": [2], "top": 2},
    "/api/classify": {"image": IMAGE, "top": 2, "method": "cam"},
    "/api/segment": {"image": IMAGE, "k": 2},
    "/api/images/sample": {"name": "chessboard"},
    "/api/images/scene": {"seed": 3},
}
GARBAGE = [None, True, False, 0, -1, 1, 7, 2**31, 2**53 + 1, 2**64, 10**30, -(10**30), 1.5, -0.0,
           1e308, "", " ", "x" * 100_000, "../../etc/passwd", "/dev/zero", "\x00", "\u202e",
           "sample:camera", "same", "valid", "cam", "classifier.fc", "segmenter", "*", ".*",
           "backbone.block1", [], [0], [1, 1], [1, 2, 3, 4], [-1], [1024, 1024], [10**9],
           [0.5], ["1"], [None], [[1]], [1] * 2000, {}, {"a": 1}, "🙂" * 50]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999",
               "123456789012345678901234567890123456789", "1.0e-400", "0x10", "+1", "01"]
TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
         "multipart/form-data; boundary=x", "application/octet-stream", "", "application/json; "
         "charset=utf-16", "image/png"]


def _mutant(rng: random.Random) -> tuple[str, str, dict]:
    """One hostile request: method, path and httpx keyword arguments."""
    kind = rng.random()
    path = rng.choice(list(VALID))
    body = dict(VALID[path])
    if kind < 0.12:  # a valid request now and then (the server must still work)
        return "POST", path, {"json": body}
    if kind < 0.40:  # a field set to something of another type or size
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(list(body) + ["extra"])] = rng.choice(GARBAGE)
        return "POST", path, {"json": body}
    if kind < 0.46:  # unknown fields, missing fields
        if rng.random() < 0.5:
            body[rng.choice(["surprise", "__proto__", "constructor", "x" * 300])] = 1
        else:
            body.pop(rng.choice(list(body)), None)
        return "POST", path, {"json": body}
    if kind < 0.56:  # numbers JSON does not have, or no float can hold
        text = json.dumps({**body, "_": 0})
        numeric = [k for k, v in body.items() if isinstance(v, int) and not isinstance(v, bool)]
        key = rng.choice(numeric or ["_"])
        text = re.sub(rf'"{key}": -?\d+', f'"{key}": {rng.choice(RAW_NUMBERS)}', text)
        return "POST", path, {"content": text.encode(),
                              "headers": {"content-type": "application/json"}}
    if kind < 0.64:  # truncated or broken JSON
        text = json.dumps(body)
        cut = text[: rng.randint(0, len(text) - 1)]
        broken = rng.choice([cut, cut + "}}}", "[" * 5000 + "]" * 5000, "[" * 100_000,
                             '{"image": "a", "image": "b"}', "null", "[]", '"text"', "{" + cut])
        return "POST", path, {"content": broken.encode(),
                              "headers": {"content-type": "application/json"}}
    if kind < 0.72:  # random bytes, any declared type
        return "POST", path, {"content": rng.randbytes(rng.choice([0, 1, 10, 1000, 70_000])),
                              "headers": {"content-type": rng.choice(TYPES)}}
    if kind < 0.78:  # a valid body declared as something else
        return "POST", path, {"content": json.dumps(body).encode(),
                              "headers": {"content-type": rng.choice(TYPES[1:])}}
    if kind < 0.90:  # uploads: random, truncated, wrongly named, almost images
        return "POST", "/api/images", _upload(rng)
    # other methods, paths and ids
    method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST"])
    target = rng.choice(["/api/info", "/api/layers", "/api/layers?model=" + rng.choice(
        ["", "resnet18x", "../x", "%00", "x" * 5000, "shapes", "/etc/passwd"]),
        "/api/images/" + rng.choice(["x", "..%2F..", "%2e%2e%2f", "a" * 90, "scene-7",
                                     "scene-7%00", "%ff%fe"]) + ".png",
        "/api/" + rng.choice(["", "lab/", "maps/x", "..", "images/sample/x"]),
        "/static/" + rng.choice(["", "../app.py", "%2e%2e/state.py", "x" * 300]), "/"])
    return method, target, {}


_PNG = png_bytes((np.arange(24 * 20 * 3) % 255).astype(np.uint8).reshape(24, 20, 3))


def _upload(rng: random.Random) -> dict:
    choice = rng.randrange(7)
    data = [
        rng.randbytes(rng.randint(0, 5000)),
        _PNG[: rng.randint(0, len(_PNG) - 1)],
        _PNG + rng.randbytes(100),
        _PNG[:40] + rng.randbytes(200) + _PNG[240:],
        b"GIF89a" + rng.randbytes(50),
        b"\xff\xd8\xff\xe0" + rng.randbytes(300),
        _PNG,
    ][choice]
    name = rng.choice(["a.png", "b.jpg", "../../x.png", "x" * 1000, "\u00e9.png", ""])
    return {"content": data, "headers": {"x-filename": name.encode(),
                                         "content-type": rng.choice(TYPES)}}


def test_a_thousand_hostile_requests(capsys):
    session = make_session()
    client = TestClient(create_app(session), raise_server_exceptions=False)
    rng = random.Random(20261126)
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    for n in range(1000):
        method, path, kwargs = _mutant(rng)
        r = client.request(method, path, **kwargs)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (n, method, path, str(kwargs)[:300], r.text[:300])
        if r.status_code >= 400 and method != "HEAD":
            one_line_error(r)
        elif r.status_code == 200 and r.headers["content-type"] == "application/octet-stream":
            assert r.content[:4] == b"FMAP"
    # the server still answers properly
    ok = client.post("/api/maps", json={"image": IMAGE, "layer": CONV})
    assert ok.status_code == 200 and ok.content[:4] == b"FMAP"
    with capsys.disabled():
        print(f"\n1000 hostile requests in {time.perf_counter() - started:.1f} s: "
              f"{dict(sorted(statuses.items()))}")
    assert len(statuses) >= 6 and statuses.get(200, 0) >= 50


# ------------------------------------------------------------------------------ 8 clients


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _client_run(url: str, worker: int, rounds: int, failures: list, counts: list) -> None:
    rng = random.Random(worker)
    image = f"scene-{worker % 3 + 1}"
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/api/images/scene", json={"seed": worker % 3 + 1})
        for k in range(rounds):
            layer = rng.choice([CONV, "backbone.block2.conv2", "backbone.block3",
                                "backbone.block4.relu2"])
            requests = [
                ("POST", "/api/maps", {"json": {"image": image, "layer": layer, "top": 8}}),
                ("POST", "/api/lab", {"json": {"image": image, "filters": "sobel,gabor:4",
                                               "stride": [1 + k % 3], "short_side": 64,
                                               "channel": "stride", "seq": k},
                                      "headers": {"x-client": f"w{worker}"}}),
                ("POST", "/api/overview", {"json": {"image": image, "per_layer": 4}}),
                ("POST", "/api/field", {"json": {"image": image, "layer": layer,
                                                 "at": [1, 1]}}),
                ("POST", "/api/classify", {"json": {"image": image, "top": 3}}),
                ("POST", "/api/whatif", {"json": {"image": image, "layer": CONV,
                                                  "stride": [1 + k % 2]}}),
                ("POST", "/api/segment", {"json": {"image": image}}),
                ("POST", "/api/images", {"content": _PNG}),
                ("GET", "/api/info", {}),
                ("GET", f"/api/images/{image}.png", {}),
            ]
            method, path, kwargs = requests[(k + worker) % len(requests)]
            r = c.request(method, path, **kwargs)
            counts[0] += 1
            if r.status_code >= 500 or (r.status_code >= 400 and r.status_code != 409):
                failures.append((worker, k, path, r.status_code, r.text[:200]))


def _round(url: str, rounds: int) -> tuple[list, int]:
    failures: list = []
    counts = [0]
    threads = [threading.Thread(target=_client_run, args=(url, w, rounds, failures, counts))
               for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return failures, counts[0]


def test_eight_clients_at_once_on_a_real_server(capsys):
    handle = explore()  # the bundled model, a real uvicorn server on a free port of 127.0.0.1
    try:
        assert handle.url.startswith("http://127.0.0.1:")
        failures, _ = _round(handle.url, 20)  # warm-up: caches, thread pools, allocator arenas
        assert failures == []
        gc.collect()
        warm = _rss()
        started = time.perf_counter()
        failures, done = _round(handle.url, 40)
        seconds = time.perf_counter() - started
        gc.collect()
        after = _rss()
        assert failures == [], failures[:5]
        with capsys.disabled():
            print(f"\n8 clients: {done} requests in {seconds:.1f} s; RSS after warm-up "
                  f"{warm / 2**20:.0f} MB, after the run {after / 2**20:.0f} MB "
                  f"({after / warm:.3f}x); {handle.session.computations} computations")
        assert after <= 1.10 * warm
    finally:
        handle.stop()
    assert not handle.running


# ------------------------------------------------------------------------------ Ctrl-C


def _explore_command(capsys) -> list[str] | None:
    """The command that starts the explorer, where this featuremap has one (asked in-process:
    only the explorer itself needs a process of its own, for its Ctrl-C)."""
    code, _, _ = run(["explore", "--help"], capsys)
    return [sys.executable, "-m", "featuremap", "explore"] if code == 0 else None


def test_ctrl_c_stops_explore_at_once(capsys):
    command = _explore_command(capsys)
    if command is None:
        pytest.skip("this featuremap has no 'explore' command")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([*command, "--no-browser"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()  # "featuremap explorer at http://127.0.0.1:PORT/ ..."
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, (line, process.stderr.read() if process.poll() is not None else "")
        url = found.group(0)
        deadline = time.monotonic() + 30
        while True:
            try:
                with httpx.Client(base_url=url, timeout=30) as c:
                    assert c.get("/api/info").status_code == 200
                    r = c.post("/api/maps", json={"image": IMAGE, "layer": CONV})
                    assert r.status_code == 200 and r.content[:4] == b"FMAP"
                    # a keep-alive connection left open must not hold the server up
                    held = httpx.Client(base_url=url, timeout=30)
                    assert held.get("/api/info").status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        started = time.perf_counter()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        seconds = time.perf_counter() - started
        held.close()
        out, err = process.communicate()
        with capsys.disabled():
            print(f"\nCtrl-C stopped 'featuremap explore' in {seconds * 1000:.0f} ms")
        assert code == 0, err
        assert "Traceback" not in err and "explorer stopped" in out
        # how fast is measured in benchmarks/bench_explorer.py, not asserted here: tests never
        # assert wall time (a loaded machine stretches it)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
