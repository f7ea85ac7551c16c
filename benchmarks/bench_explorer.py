"""The explorer over real HTTP (a uvicorn server on 127.0.0.1, in this process), against the
library's own calls in the same run, interleaved round by round; medians.

(a) Convolution lab: one change (a slider moved) on a 224x224 image with 16 filters, from the
    request to the decoded maps (float, restored from the bytes), against ``compute_maps`` with
    the same settings. Target: <= 50 ms.
(b) Network view on resnet18 (random weights): switching layer after the first pass (request to
    decoded maps), against ``extract`` of that one layer (what running the model again would
    cost). Target: <= 100 ms. And the first pass of resnet50 (random weights; a new image each
    round), against the library's ``extract`` of every layer on the same image (what the
    server's cache keeps), once the cache is full (while it fills, the first passes also fault
    in the memory it keeps: printed apart). Target: <= 1.1x.
(c) A slider dragged quickly: 50 stride events in 1 s, sent by a client that behaves like the
    page (at most one request in flight per channel, the newest value pending, sequence
    numbers), without and with the page's 180 ms gap between starts; and by a careless client
    that sends every event at once. The server's count of computations (``/api/info``) says
    how many reached the model. Target: a handful with the page's behaviour.
(d) The page: DOMContentLoaded to the first maps drawn (``window.fmStats.ready``, set when
    ``body[data-ready='1']``), in headless Chromium via Playwright. Target: <= 1 s.

The process runs with ``featuremap.extraction.retain_memory()``, as ``featuremap explore`` does
(freed memory is reused instead of page-faulted in afresh: the cache keeps passes alive, and
each new pass would otherwise fault in its 128 MB on resnet50); the library's calls run in the
same process under the same setting. The share of the CPUs that other processes used during
(a)-(c) is printed: only quiet runs are worth comparing.

Run:  python benchmarks/bench_explorer.py [--rounds 15] [--parts abcd]
          [--chromium /usr/bin/chromium] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from cpushare import busy_seconds, others_share  # noqa: E402

from featuremap.extraction import extract, retain_memory  # noqa: E402
from featuremap.quantize import Quantized, unpack  # noqa: E402
from featuremap.toy import compute_maps  # noqa: E402
from featuremap.web.server import explore  # noqa: E402
from featuremap.zoo import load_model  # noqa: E402

FILTERS = "sobel,gabor:6,random:8"  # 16 filters
STRIDES = [1, 2, 3, 4]
QUIET = 0.2  # seconds of sleep before each timed first pass


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int, size: int = 224) -> np.ndarray:
    """A 224x224 photo (the astronaut sample, resized) with a little seeded noise."""
    from PIL import Image

    from featuremap.images import load_image, to_uint8_hwc

    base = Image.fromarray(to_uint8_hwc(load_image("sample:astronaut"))).resize((size, size))
    noise = np.random.default_rng(seed).integers(-3, 4, (size, size, 3))
    return np.clip(np.asarray(base).astype(int) + noise, 0, 255).astype(np.uint8)


def decoded(response: httpx.Response) -> np.ndarray:
    """The maps of a binary answer as float32, as the page would draw them."""
    assert response.status_code == 200, response.text
    header, blocks = unpack(response.content)
    d, h, w = header["depth"], header["height"], header["width"]
    data = np.frombuffer(blocks[0], np.uint8).reshape(d, h, w)
    return Quantized(data, [tuple(r) for r in header["ranges"]]).restore()


def timed(fn, quiet: float = 0.0) -> float:
    """Seconds ``fn()`` takes; after ``quiet`` seconds of sleep (the other side's threads stop
    spinning: torch's OpenMP threads wait about 0.1 s for more work)."""
    time.sleep(quiet)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def upload(client: httpx.Client, pixels: np.ndarray) -> str:
    r = client.post("/api/images", content=png(pixels))
    assert r.status_code == 200, r.text
    return r.json()["id"]


# ------------------------------------------------------------------------------ (a) the lab


def bench_lab(rounds: int) -> dict:
    handle = explore()
    try:
        with httpx.Client(base_url=handle.url, timeout=120) as c:
            pixels = photo(0)
            image = upload(c, pixels)

            def http(stride):
                return decoded(c.post("/api/lab", json={
                    "image": image, "filters": FILTERS, "stride": [stride], "padding": [1],
                    "short_side": 224}))

            def library(stride):
                return compute_maps(pixels, FILTERS, stride=stride, padding=1, short_side=224
                                    ).maps

            assert http(1).shape == library(1).shape and len(library(1)) == 16
            for s in STRIDES:  # warm up
                http(s), library(s)
            served, own, ratios = [], [], []
            for r in range(rounds):
                for s in STRIDES:
                    pair = [timed(lambda s=s: http(s)), timed(lambda s=s: library(s))]
                    if r % 2:  # flip the order every round
                        pair = [timed(lambda s=s: library(s)), timed(lambda s=s: http(s))][::-1]
                    served.append(pair[0])
                    own.append(pair[1])
                    ratios.append(pair[0] / pair[1])
    finally:
        handle.stop()
    return {"served_ms": 1e3 * statistics.median(served),
            "library_ms": 1e3 * statistics.median(own), "ratio": statistics.median(ratios),
            "target_ms": 50}


# ------------------------------------------------------------------------------ (b) networks


def bench_switch(rounds: int) -> dict:
    layers = ["conv1", "layer1.0.conv2", "layer2", "layer3.1.bn2", "layer4", "layer1"]
    handle = explore("resnet18")
    model = handle.session.model
    try:
        with httpx.Client(base_url=handle.url, timeout=120) as c:
            pixels = photo(1)
            image = upload(c, pixels)
            t_first = timed(lambda: decoded(c.post("/api/maps", json={
                "image": image, "layer": "layer1", "top": 16})))

            def http(layer):
                return decoded(c.post("/api/maps", json={"image": image, "layer": layer,
                                                        "top": 16}))

            def library(layer):
                return extract(model, pixels, layers=[layer])[layer]

            for layer in layers:
                http(layer), library(layer)
            served, ratios = [], []
            for _ in range(rounds):
                for layer in layers:
                    a = timed(lambda layer=layer: http(layer))
                    b = timed(lambda layer=layer: library(layer))
                    served.append(a)
                    ratios.append(a / b)
    finally:
        handle.stop()
    return {"first_pass_ms": 1e3 * t_first, "switch_ms": 1e3 * statistics.median(served),
            "switch_p90_ms": 1e3 * float(np.percentile(served, 90)),
            "ratio_to_extract_one_layer": statistics.median(ratios), "target_ms": 100}


def bench_first_pass(rounds: int) -> dict:
    handle = explore("resnet50")
    model = handle.session.model
    names = [n for n, _ in model.module.named_modules() if n]
    try:
        with httpx.Client(base_url=handle.url, timeout=300) as c:
            def http(image):
                return decoded(c.post("/api/maps", json={"image": image, "layer": "layer1",
                                                        "top": 16}))

            def library(pixels):
                return extract(model, pixels, layers=names, early_stop=False,
                               allow_missing=True)

            # Warm up until the cache is full: while it grows, each new pass also faults in
            # the memory the cache then keeps (once per process, not per image).
            filling = []
            for k in range(handle.session.limits.passes + 1):
                warm = photo(100 + k)
                image = upload(c, warm)
                filling.append(timed(lambda image=image: http(image)))
                library(warm)
            served, own, ratios = [], [], []
            for r in range(rounds):
                pixels = photo(200 + r)  # a new image: the cache cannot answer
                image = upload(c, pixels)
                served_call = lambda image=image: http(image)  # noqa: E731
                own_call = lambda pixels=pixels: library(pixels)  # noqa: E731
                if r % 2:
                    b, a = timed(own_call, QUIET), timed(served_call, QUIET)
                else:
                    a, b = timed(served_call, QUIET), timed(own_call, QUIET)
                served.append(a)
                own.append(b)
                ratios.append(a / b)
    finally:
        handle.stop()
    return {"layers": len(names), "filling_ms": [round(1e3 * t) for t in filling],
            "served_ms": 1e3 * statistics.median(served),
            "library_ms": 1e3 * statistics.median(own), "ratio": statistics.median(ratios),
            "target_ratio": 1.1}


# ------------------------------------------------------------------------------ (c) a slider


class Channel:
    """The page's request channel: one request in flight, the newest value pending, sequence
    numbers, and optionally a minimum gap between starts."""

    def __init__(self, client: httpx.Client, image: str, gap: float, name: str) -> None:
        self.client, self.image, self.gap, self.name = client, image, gap, name
        self.lock = threading.Condition()
        self.pending: int | None = None
        self.inflight = False
        self.seq = 0
        self.sent = 0
        self.last_start = -1e9
        self.superseded = 0
        self.drawn: list[tuple[int, float]] = []  # (stride, when)

    def submit(self, stride: int) -> None:
        with self.lock:
            self.pending = stride
            if not self.inflight:
                self.inflight = True
                threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            with self.lock:
                wait = self.last_start + self.gap - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with self.lock:
                if self.pending is None:
                    self.inflight = False
                    self.lock.notify_all()
                    return
                stride, self.pending = self.pending, None
                self.seq += 1
                seq = self.seq
                self.sent += 1
                self.last_start = time.perf_counter()
            r = self.client.post("/api/lab", json={
                "image": self.image, "filters": FILTERS, "stride": [stride], "padding": [1],
                "short_side": 224, "channel": "stride", "seq": seq},
                headers={"x-client": self.name})
            if r.status_code == 409:
                self.superseded += 1
                continue
            decoded(r)
            self.drawn.append((stride, time.perf_counter()))

    def wait(self) -> None:
        with self.lock:
            while self.inflight:
                self.lock.wait()


def computations(c: httpx.Client) -> int:
    return c.get("/api/info").json()["computations"]


def drag(c: httpx.Client, image: str, *, gap: float | None, name: str) -> dict:
    """50 stride events in 1 s; gap None: a careless client (every event sent at once)."""
    events = [1 + (k // 5) % 8 for k in range(50)]  # the slider goes 1..8 and back
    before = computations(c)
    started = time.perf_counter()
    if gap is None:
        threads, statuses = [], []

        def send(k, stride):
            r = c.post("/api/lab", json={"image": image, "filters": FILTERS,
                                         "stride": [stride], "padding": [1], "short_side": 224,
                                         "channel": "stride", "seq": k},
                       headers={"x-client": name})
            statuses.append(r.status_code)

        for k, stride in enumerate(events):
            t = threading.Thread(target=send, args=(k, stride))
            t.start()
            threads.append(t)
            time.sleep(max(0.0, started + (k + 1) * 0.02 - time.perf_counter()))
        for t in threads:
            t.join()
        done = time.perf_counter()
        sent, superseded = len(events), statuses.count(409)
    else:
        channel = Channel(c, image, gap, name)
        for k, stride in enumerate(events):
            channel.submit(stride)
            time.sleep(max(0.0, started + (k + 1) * 0.02 - time.perf_counter()))
        channel.wait()
        done = time.perf_counter()
        sent, superseded = channel.sent, channel.superseded
        assert channel.drawn[-1][0] == events[-1]  # the last value is the one drawn
    return {"events": len(events), "requests": sent, "superseded_409": superseded,
            "computations": computations(c) - before,
            "last_event_to_drawn_ms": 1e3 * (done - started - 0.98)}


def bench_drag() -> dict:
    handle = explore()
    try:
        with httpx.Client(base_url=handle.url, timeout=120,
                          limits=httpx.Limits(max_connections=64)) as c:
            image = upload(c, photo(3))
            drag(c, image, gap=0.0, name="warm")
            return {"page (one in flight + newest, 180 ms gap)": drag(c, image, gap=0.18,
                                                                       name="page"),
                    "one in flight + newest, no gap": drag(c, image, gap=0.0, name="nogap"),
                    "careless (every event at once)": drag(c, image, gap=None,
                                                           name="careless")}
    finally:
        handle.stop()


# ------------------------------------------------------------------------------ (d) the page


def bench_page(rounds: int, chromium: str | None) -> dict | str:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    path = chromium or os.environ.get("FEATUREMAP_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path):
        return f"no Chromium at {path}"
    handle = explore()
    times = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
            for _ in range(rounds + 1):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(handle.url)
                try:
                    page.wait_for_selector("body[data-ready='1']", state="attached",
                                           timeout=30_000)
                except Exception:
                    browser.close()
                    return "the page sets no ready marker (body[data-ready='1'])"
                times.append(page.evaluate("() => window.fmStats.ready"))
                page.close()
            browser.close()
    finally:
        handle.stop()
    times = times[1:]  # the first load fills the browser's cache
    return {"ready_ms": statistics.median(times), "max_ms": max(times), "loads": len(times),
            "target_ms": 1000}


# ------------------------------------------------------------------------------ main


def bench_stop(rounds: int) -> dict:
    """(e) Ctrl-C: ``featuremap explore`` serves a request, then SIGINT; the time until it says
    'explorer stopped' (the server closed) and until the process has exited."""
    import re
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root / "src")}
    stopped, exited = [], []
    for _ in range(rounds):
        process = subprocess.Popen([sys.executable, "-m", "featuremap", "explore",
                                    "--no-browser"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env)
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(100):
                try:
                    c.get("/api/info")
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            c.post("/api/maps", json={"image": "scene-7", "layer": "backbone.block2"})
        start = time.perf_counter()
        process.send_signal(signal.SIGINT)
        line = process.stdout.readline()
        stopped.append((time.perf_counter() - start) * 1000 if "stopped" in line else float("nan"))
        process.wait(timeout=60)
        exited.append((time.perf_counter() - start) * 1000)
    return {"stopped_ms": float(np.median(stopped)), "exited_ms": float(np.median(exited)),
            "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--parts", default="abcde", help="which of (a)-(e) to run")
    parser.add_argument("--chromium", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    retain_memory()  # as the featuremap command line does in every command that runs a network
    warnings.filterwarnings("ignore", message=".*random weights")
    load_model("resnet50", weights="random")  # import and build once before timing anything
    start, wall0 = busy_seconds(), time.perf_counter()
    loadavg0 = os.getloadavg()
    parts = {"lab": ("a", lambda: bench_lab(args.rounds)),
             "switch": ("b", lambda: bench_switch(args.rounds)),
             "first_pass": ("b", lambda: bench_first_pass(args.rounds)),
             "drag": ("c", bench_drag)}
    results = {name: run() for name, (part, run) in parts.items() if part in args.parts}
    others = others_share(start, wall0)
    if "d" in args.parts:
        results["page"] = bench_page(7, args.chromium)
    if "e" in args.parts:
        results["stop"] = bench_stop(5)

    import fastapi
    import uvicorn

    print(f"featuremap explorer over HTTP; {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), fastapi {fastapi.__version__}, uvicorn "
          f"{uvicorn.__version__}, Python {platform.python_version()}; {args.rounds} rounds")
    if "lab" in results:
        a = results["lab"]
        print(f"(a) lab change, 224x224, 16 filters: {a['served_ms']:.1f} ms over HTTP (target "
              f"<= 50), compute_maps {a['library_ms']:.1f} ms, ratio {a['ratio']:.2f}x")
    if "switch" in results:
        b = results["switch"]
        print(f"(b) resnet18 switching layer: {b['switch_ms']:.1f} ms (p90 "
              f"{b['switch_p90_ms']:.1f}; target <= 100), {b['ratio_to_extract_one_layer']:.2f}x "
              f"extract of that layer; first pass {b['first_pass_ms']:.0f} ms")
        f = results["first_pass"]
        print(f"    resnet50 first pass ({f['layers']} layers kept): {f['served_ms']:.0f} ms "
              f"over HTTP, extract {f['library_ms']:.0f} ms, ratio {f['ratio']:.3f}x (target "
              f"<= 1.1); while the cache filled: {f['filling_ms']} ms")
    if "drag" in results:
        print("(c) a slider dragged: 50 events in 1 s")
        for name, d in results["drag"].items():
            print(f"    {name:44} {d['requests']:3d} requests, {d['superseded_409']:3d} "
                  f"answered 409, {d['computations']:3d} computations, last value drawn "
                  f"{d['last_event_to_drawn_ms']:.0f} ms after the last event")
    page = results.get("page")
    if isinstance(page, dict):
        print(f"(d) page ready (DOMContentLoaded to first maps drawn): {page['ready_ms']:.0f} ms "
              f"median of {page['loads']} loads (max {page['max_ms']:.0f}; target <= 1000)")
    elif page is not None:
        print(f"(d) page: not measured ({page})")
    if "stop" in results:
        e = results["stop"]
        print(f"(e) Ctrl-C: 'explorer stopped' after {e['stopped_ms']:.0f} ms (the server closed;"
              f" target < 1000), process gone after {e['exited_ms']:.0f} ms (median of "
              f"{e['rounds']})")
    if others is not None:
        print(f"other processes used {others:.0%} of the CPUs during (a)-(c); load average "
              f"{loadavg0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": str(date.today()), "machine": platform.platform(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "others_share": others, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
