"""Starting the explorer's server: each server binds its own port once and serves on that very
socket (no port is chosen, closed and bound again, so two servers started at once, in one
process or in two test workers, never race for one); a port given is the port served; a port in
use is one line, from ``explore()`` and from ``featuremap explore --port``."""

from __future__ import annotations

import errno
import socket
import sys
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from clirun import run  # noqa: E402
from featuremap.errors import ConfigError  # noqa: E402
from featuremap.web.server import explore  # noqa: E402
from featuremap.zoo import load_model  # noqa: E402


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes", weights="DEFAULT")


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def _answers(url: str) -> dict:
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/api/info")
        assert r.status_code == 200, r.text
        return r.json()


def test_two_servers_started_at_once_get_ports_of_their_own_and_both_answer(shapes):
    handles: list = [None, None]
    failures: list = []
    ready = threading.Barrier(2)

    def start(i: int) -> None:
        ready.wait()
        try:
            handles[i] = explore(shapes)
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert failures == []
        first, second = handles
        assert first.url.startswith("http://127.0.0.1:") and second.url.startswith(
            "http://127.0.0.1:")
        assert _port(first.url) != _port(second.url)
        assert first.session is not second.session
        for handle in handles:
            assert handle.running
            assert _answers(handle.url)["model"] == shapes.name
            # the port stays held while the server runs: nobody else can bind it
            with socket.socket() as other, pytest.raises(OSError) as taken:
                other.bind(("127.0.0.1", _port(handle.url)))
            assert taken.value.errno == errno.EADDRINUSE
    finally:
        for handle in handles:
            if handle is not None:
                handle.stop()
    assert not any(h.running for h in handles)


@pytest.mark.skipif(sys.platform != "linux", reason="holds a port with Linux's SO_REUSEADDR")
def test_the_port_given_is_the_port_served(shapes):
    # Reserve a port without listening on it (Linux lets a later SO_REUSEADDR socket bind it
    # and listen, as the server does), so that no other process takes it in the meantime.
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        handle = explore(shapes, port=port)
        try:
            assert handle.url == f"http://127.0.0.1:{port}/"
            assert _answers(handle.url)["model"] == shapes.name
        finally:
            handle.stop()
        assert not handle.running


def test_a_port_in_use_is_one_line(shapes, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        said = f"port {port} on 127.0.0.1 is in use: choose another with --port"
        with pytest.raises(ConfigError, match=said):
            explore(shapes, port=port)
        code, out, err = run(["explore", "--no-browser", "--port", str(port)], capsys)
    assert code == 2, (out, err)
    assert out == ""  # refused before the address is printed
    assert err.startswith(f"error: {said}") and err.count("\n") == 1, err
