"""ASGI middleware: every GraphQL HTTP request carries ``Authorization: Bearer <key>``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.roles import Principal

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
        principal = await self.verify(token) if token else None
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
        body = json.dumps(
            {"errors": [{"message": message, "extensions": {"code": "UNAUTHENTICATED"}}]}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
