"""Around every HTTP request: an id for its log lines and its response, and its duration."""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.metrics import HTTP_REQUEST_DURATION

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it is short and plain (it ends up in logs); else a new one.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "other"  # the path label of a request no route matched (404)


def request_id(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is acceptable, else a fresh one."""
    given = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if given is not None and REQUEST_ID_PATTERN.fullmatch(given):
        return given
    return uuid.uuid4().hex


def route_path(scope: Scope) -> str:
    """The matched route's template (``/graphql``), never the raw URL: a bounded label."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestObserver:
    """ASGI middleware: binds ``request_id`` to the log context, returns it as
    ``X-Request-ID``, and observes ``arbiter_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        token = logs.start_context(request_id=rid)
        status = 500  # what the caller sees if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                method = scope["method"] if scope["method"] in METHODS else "other"
                HTTP_REQUEST_DURATION.labels(route_path(scope), method, str(status)).observe(
                    time.perf_counter() - started)
            logs.end_context(token)
