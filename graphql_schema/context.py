"""The per-request context resolvers receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strawberry.types import Info as _Info

from app.access.roles import Principal
from app.errors import AuthenticationError
from app.http.authn import Verify
from app.predictions.services import Services


@dataclass
class Context:
    """Services built once per process, and the caller of this request."""

    services: Services
    principal: Principal | None
    verify: Verify  # websockets check their key again before each ping
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None  # a websocket's connection_init payload

    def caller(self) -> Principal:
        if self.principal is None:
            raise AuthenticationError(
                "missing or invalid API key; send Authorization: Bearer <key>"
            )
        return self.principal


Info = _Info[Context, None]
