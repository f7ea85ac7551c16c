"""What the explorer's server refuses before a route sees a request.

- A ``Host`` it does not serve (a page of another site that renamed its own address to this
  machine, "DNS rebinding") and a request that another site's page sends (its ``Origin``): 403,
  when the server was given its host names (it listens on this machine only).
- A body over the limit: 413, from its declared length before anything is read, or as soon as
  the bytes read pass the limit (a body sent in chunks, or longer than it said). Routes that
  read their body in a stream (uploads, with their own larger limit) are left to do so.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

__all__ = ["Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _hostname(value: str) -> str:
    """``"[::1]:8000"`` -> ``"::1"``; ``"localhost:8000"`` -> ``"localhost"``."""
    try:
        return (urlsplit(f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: hosts and origins, and the size of request bodies."""

    def __init__(self, app: Any, *, body_bytes: int, hosts: tuple[str, ...] | None = None,
                 streamed: tuple[str, ...] = ()) -> None:
        self.app, self.body_bytes, self.streamed = app, body_bytes, streamed
        self.hosts = None if hosts is None else {h.lower().strip("[]") for h in hosts}

    def foreign(self, headers: dict[str, str]) -> str | None:
        """Why a request is refused for where it comes from, or None."""
        if self.hosts is None:
            return None
        if _hostname(headers.get("host", "")) not in self.hosts:
            return ("this server answers only to " + ", ".join(sorted(self.hosts))
                    + ": open the address it printed.")
        origin = headers.get("origin")
        if origin is not None and origin != "null":
            try:
                host = (urlsplit(origin).hostname or "").lower()
            except ValueError:
                host = ""
            if host not in self.hosts:
                return "requests from another site's page are refused."
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        why = self.foreign(headers)
        if why is not None:
            await _refuse(send, 403, why)
            return
        if scope.get("path") in self.streamed:
            await self.app(scope, receive, send)
            return
        limit = self.body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, f"the request body is {int(declared):,} bytes, over the "
                                     f"limit of {limit:,} bytes.")
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the request body is over the limit of {limit:,} "
                                             "bytes.")
            return message

        await self.app(scope, counted, send)
