"""ASGI middleware: every GraphQL HTTP request carries ``Authorization: Bearer <key>``."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.roles import Principal
from app.db.outage import database_unreachable
from app.errors import ServiceUnavailableError

log = logging.getLogger("arbiter.http")

Verify = Callable[[str], Awaitable[Principal | None]]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeyAuth:
    """Puts the caller in ``scope["state"]["principal"]`` or answers 401.

    A plain GET without a query is the GraphiQL page and needs no key (the page itself
    sends the key as a header you set in it)."""

    def __init__(self, app: ASGIApp, verify: Verify) -> None:
        self.app = app
        self.verify = verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_ide_page(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        try:
            principal = await self.verify(token) if token else None
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            await self._unavailable(send, exc)
            return
        if principal is None:
            await self._refuse(
                send,
                "missing API key; send Authorization: Bearer <key>"
                if token is None
                else "invalid or revoked API key",
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    @staticmethod
    def _is_ide_page(scope: Scope) -> bool:
        return scope["method"] == "GET" and b"query=" not in scope.get("query_string", b"")

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        await _reply(send, 401, message, "UNAUTHENTICATED", [(b"www-authenticate", b"Bearer")])

    @staticmethod
    async def _unavailable(send: Send, exc: Exception) -> None:
        """The key could not be checked: retryable, not the client's fault nor a crash."""
        error = ServiceUnavailableError()
        error_id = uuid.uuid4().hex[:12]
        log.warning("API key check: database unreachable (error %s): %r", error_id, exc)
        await _reply(send, 503, str(error), error.code,
                     [(b"retry-after", str(error.RETRY_AFTER_SECONDS).encode())],
                     {**error.extensions(), "errorId": error_id})


async def _reply(send: Send, status: int, message: str, code: str,
                 headers: list[tuple[bytes, bytes]], extensions: dict[str, object] | None = None
                 ) -> None:
    """A GraphQL-shaped JSON error answer with ``extensions.code``."""
    body = json.dumps({"errors": [{"message": message,
                                   "extensions": {"code": code, **(extensions or {})}}]}
                      ).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers,
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
