"""Helpers for the explorer's tests: decode its answers, check its errors, drive its ASGI app."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featuremap.quantize import Quantized, unpack

CHROMIUM = os.environ.get("FEATUREMAP_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("FEATUREMAP_REQUIRE_BROWSER") == "1"


def _why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                "FEATUREMAP_CHROMIUM)")
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's, or FEATUREMAP_CHROMIUM) driven by Playwright. Without
    one the test skips, unless FEATUREMAP_REQUIRE_BROWSER=1 (CI): then it fails."""
    why = _why_no_browser()
    if why is not None:
        if REQUIRED:
            pytest.fail(f"FEATUREMAP_REQUIRE_BROWSER=1 but {why}", pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def maps_of(header: dict[str, Any], blob: bytes) -> np.ndarray:
    """The float maps ``(D, H, W)`` a maps message carries (quantised bytes and ranges)."""
    d, h, w = header["depth"], header["height"], header["width"]
    data = np.frombuffer(blob, np.uint8).reshape(d, h, w)
    return Quantized(data, [tuple(r) for r in header["ranges"]]).restore()


def decode(response) -> tuple[dict[str, Any], list[bytes]]:
    """The header and blocks of a binary answer (after checking that it is one)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    return unpack(response.content)


def within_a_step(got: np.ndarray, expected: np.ndarray, ranges) -> None:
    """``got`` (restored from bytes) equals ``expected`` within one quantisation step per map."""
    expected = np.asarray(expected, np.float32)
    assert got.shape == expected.shape
    step = np.array([(hi - lo) / 255 for lo, hi in ranges], np.float32)[:, None, None]
    slack = step + 1e-6 * (1 + np.abs(expected))
    worst = float((np.abs(got - expected) - slack).max())
    assert worst <= 0, f"off by {worst:g} beyond one step"


def as_json(value: Any) -> Any:
    """What a library value's ``to_dict()`` looks like after a trip through the server's JSON."""
    from featuremap.web.wire import finite

    return json.loads(json.dumps(finite(value), allow_nan=False))


def one_line_error(response, status: int | tuple[int, ...] | None = None) -> str:
    """Check that ``response`` is a JSON error of one line (and of ``status``); return it."""
    if status is not None:
        allowed = (status,) if isinstance(status, int) else status
        assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    line = body["error"]
    assert isinstance(line, str) and line and "\n" not in line and "\r" not in line
    assert len(line) <= 2000
    return line


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small PNG whose header claims ``width x height`` grey pixels (a decompression bomb:
    its rows of zeros would compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def asgi_request(app, method: str, path: str, chunks, *, headers=(), disconnect=False):
    """Drive ``app`` directly: send ``chunks`` of the body one ``receive()`` at a time.

    Returns ``(status, body, pulled)``: the answer and how many chunks the app asked for (to
    check that it stopped reading). With ``disconnect`` the client goes away after the chunks.
    """
    chunks = list(chunks)
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            more = pulled < len(chunks) or disconnect
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # the app should have answered

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000),
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]}

    async def main():
        await asyncio.wait_for(app(scope, receive, send), timeout=60)

    asyncio.run(main())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, pulled
