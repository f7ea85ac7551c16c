"""Start the explorer: on the command line (blocking, Ctrl-C stops it) or from Python and
notebooks (a background thread, a handle to stop it, and an iframe in the notebook)."""

from __future__ import annotations

import errno
import html
import os
import socket
import threading
import time
import warnings
from typing import Any

from featuremap.errors import ConfigError, ModelError

__all__ = ["Explorer", "check_stack", "explore", "make_session", "serve"]

LOCAL = ("127.0.0.1", "localhost", "::1")


def check_stack() -> None:
    """Refuse, with the install line, when the optional web stack is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ModelError("the explorer needs its web stack, which is not installed: "
                         "pip install 'featuremap[explore]'.") from None


def listen(host: str, port: int | None = None) -> socket.socket:
    """A socket listening on ``host``:``port``; no port (or 0): a free one, which the system
    picks as it binds, so that no other server can take it before this one listens (choosing a
    port, closing it and binding it again leaves that moment). The server is given this socket.

    Raises:
        ConfigError: a port in use, an address this machine does not have, a host unknown.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ConfigError(f"cannot listen on {host}: {err.strerror}.") from None
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # as asyncio does on Unix: a port just left (TIME_WAIT) serves again
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use: choose another with --port, "
                              "or leave it out for a free one.") from None
        where = f"{host}:{port}" if port else host
        raise ConfigError(f"cannot listen on {where}: {err.strerror or err}.") from None
    return sock


def make_session(model: Any = None, image: Any = None, data: Any = None):
    """A session on ``model`` (a name, a Model or an nn.Module; default the bundled one),
    with ``image`` (a path, sample:NAME, array; default a generated scene) loaded and ``data``
    (a folder of images, image/mask pairs, a list, a glob or a store; None: none) checked for
    the Channels view.

    Raises:
        ConfigError: data that cannot serve (:func:`featuremap.web.channels.check_data`).
    """
    from featuremap.model import Model, as_model
    from featuremap.web.state import Session
    from featuremap.zoo import list_models, load_model

    if model is None or isinstance(model, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(model or "shapes", weights="DEFAULT" if (model or "shapes")
                               == "shapes" else "random")
    m = model if isinstance(model, Model) else as_model(model)
    checked = None
    if data is not None:
        from featuremap.web.channels import check_data

        checked = check_data(m, data)
    choices = tuple(dict.fromkeys([m.name, *list_models()]))
    session = Session(m, choices=choices, data=checked)
    if image is None:
        session.start_image = session.add_scene(7).id
    elif isinstance(image, str) and image.startswith("sample:"):
        session.start_image = session.add_sample(image[7:]).id
    else:
        from featuremap.images import load_image, to_uint8_hwc

        pixels = to_uint8_hwc(load_image(image))
        from featuremap.web.state import Image

        found = session.keep(Image(f"start-{id(pixels):x}", str(image), pixels, pixels))
        session.start_image = found.id
    return session


class Explorer:
    """A running explorer: ``url``, ``stop()``, its ``session`` (models, images, cached
    passes), and an iframe in notebooks."""

    def __init__(self, server: Any, thread: threading.Thread, url: str,
                 session: Any = None) -> None:
        self._server, self._thread, self.url, self.session = server, thread, url, session

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server and a channel computation, and wait for the server's thread (at most
        ``timeout`` seconds)."""
        jobs = getattr(self.session, "channel_jobs", None)
        if jobs is not None:
            jobs.cancel(wait=0)
        self._server.should_exit = True
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        return (f'<iframe src="{url}" width="100%" height="720" style="border:1px solid #ccc">'
                f'</iframe><p>featuremap explorer at <a href="{url}" target="_blank">{url}</a>'
                "</p>")

    def __repr__(self) -> str:
        return f"Explorer({self.url}, {'running' if self.running else 'stopped'})"


def _run(server: Any, sock: socket.socket) -> None:
    """Serve on ``sock`` (bound by :func:`listen`) until the server is told to stop."""
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _config(app: Any, host: str, port: int):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=1, lifespan="off")


def explore(model: Any = None, image: Any = None, data: Any = None, *,
            host: str = "127.0.0.1", port: int | None = None) -> Explorer:
    """Start the explorer on a background thread and return its handle.

    ``data`` (a folder of images, image/mask pairs, a list, a glob or a store made by ``model``)
    is what the Channels view reads to show what each channel of a layer detects; it is checked
    before the server starts (a ConfigError otherwise). Without it the view says how to give it.

    Example:
        >>> handle = explore(load_model("shapes"))  # doctest: +SKIP
        >>> handle  # in a notebook: the explorer under the cell  # doctest: +SKIP
        >>> handle.stop()  # doctest: +SKIP
    """
    check_stack()
    import uvicorn

    from featuremap.web.app import create_app

    session = make_session(model, image, data)
    app = create_app(session, hosts=_hosts(host))
    sock = listen(host, port)
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(_config(app, host, port))
    server.install_signal_handlers = lambda: None  # the caller's thread keeps its signals
    thread = threading.Thread(target=_run, args=(server, sock), name="featuremap-explorer",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True  # and the thread closes the socket when it ends
        raise ConfigError(f"the explorer could not start on {host}:{port}.")
    return Explorer(server, thread, _url(host, port), session)


def _hosts(host: str) -> tuple[str, ...] | None:
    """The host names a server on ``host`` answers to: this machine's, when it listens on this
    machine only (another site's page that renamed its address to 127.0.0.1 is refused); any,
    when it listens on the network as asked."""
    return (*LOCAL, host) if host in LOCAL else None


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(model: Any = None, image: Any = None, data: Any = None, *, host: str = "127.0.0.1",
          port: int | None = None, open_browser: bool = True, say=print) -> None:
    """Run the explorer in this thread until Ctrl-C (``data`` as :func:`explore`)."""
    check_stack()
    import uvicorn

    from featuremap.web.app import create_app

    session = make_session(model, image, data)
    app = create_app(session, hosts=_hosts(host))
    sock = listen(host, port)  # a port in use: a ConfigError before anything is said
    try:
        port = int(sock.getsockname()[1])
        if host not in LOCAL:
            say(f"warning: serving on {host}: anyone who can reach this address can run the "
                "model on this machine.")
        server = uvicorn.Server(_config(app, host, port))
        url = _url(host, port)
        say(f"featuremap explorer at {url} (Ctrl-C stops it)")
        if session.data is not None:
            d = session.data
            say(f"channels of {d.images:,} images from '{d.description}'"
                + (" (a store)" if d.kind == "store" else ""))
        if open_browser:
            import webbrowser

            threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    except BaseException:
        sock.close()
        raise
    _run(server, sock)
