"""ASGI middleware: an HTTP request body larger than the limit is answered 413, whether it
announces its length or streams in chunks; nothing behind it sees a byte of it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How much of a refused body is still read (and thrown away) so that a client still
# sending it can read the 413 instead of a reset connection; past this, the connection is cut.
DRAIN_FACTOR = 4


class BodySizeLimit:
    """Reads the body incrementally up to ``max_bytes`` before passing the request on."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _content_length(scope)
        if announced is not None and announced > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._drain(receive, more, size)
                await self._refuse(send)
                return
            chunks.append(chunk)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _drain(self, receive: Receive, more: bool, size: int) -> None:
        while more and size <= self.max_bytes * DRAIN_FACTOR:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"errors": [{
            "message": f"request body larger than {self.max_bytes} bytes "
                       "(ARBITER_MAX_BODY_BYTES); send less, e.g. split a batch",
            "extensions": {"code": "PAYLOAD_TOO_LARGE", "maxBytes": self.max_bytes},
        }]}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then waits for the disconnect."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
