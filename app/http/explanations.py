"""``GET /explanations/{predictionId}.svg|.png``: a stored prediction's explanation drawn
as a waterfall (or ``?kind=bar``) chart, for auditors and admins."""

from __future__ import annotations

import re

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.access.roles import Principal
from app.errors import (
    ArbiterError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from app.http.authn import Verify, bearer_token
from app.predictions.charts import TOP_FEATURES, TOP_FEATURES_MAX, ChartKind, ImageFormat
from app.predictions.pictures import picture_etag, render, stored_explanation
from app.predictions.services import Services

PREDICTION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
STATUS = {AuthenticationError: 401, PermissionDeniedError: 403, NotFoundError: 404,
          BadRequestError: 400}
CACHE_SECONDS = 3600
# Served to browsers: the SVG may run nothing and load nothing, whatever it held.
PICTURE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": f"private, max-age={CACHE_SECONDS}",
}


class ExplanationPictures:
    """The endpoint; ``get`` is the Starlette route's handler."""

    def __init__(self, services: Services, verify: Verify) -> None:
        self.services = services
        self.verify = verify
        self.drawing = anyio.CapacityLimiter(1)  # see app.explanations.render

    async def get(self, request: Request) -> Response:
        try:
            caller = await self._caller(request)
            prediction_id, fmt = parse_name(request.path_params["name"])
            kind, class_name, top = parse_query(request)
            ex = await stored_explanation(self.services, caller, prediction_id, class_name)
        except ArbiterError as exc:
            return error_response(exc)
        headers = {**PICTURE_HEADERS, "ETag": picture_etag(ex, kind, fmt, top)}
        if headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = await render(ex, kind, fmt, top, self.drawing)
        return Response(body, media_type=fmt.media_type, headers=headers)

    async def _caller(self, request: Request) -> Principal:
        token = bearer_token(request.scope["headers"])
        if token is None:
            raise AuthenticationError("missing API key; send Authorization: Bearer <key>")
        principal = await self.verify(token)
        if principal is None:
            raise AuthenticationError("invalid or revoked API key")
        return principal


def parse_name(name: str) -> tuple[str, ImageFormat]:
    """``<predictionId>.svg`` or ``<predictionId>.png``."""
    prediction_id, dot, extension = name.rpartition(".")
    formats = ", ".join(f".{f.value}" for f in ImageFormat)
    if not dot or not prediction_id:
        raise BadRequestError(f"name the picture <predictionId>.svg or .png, got {name!r}")
    try:
        fmt = ImageFormat(extension.lower())
    except ValueError:
        raise BadRequestError(
            f"unknown picture format {extension!r}; use one of {formats}") from None
    if not PREDICTION_ID.fullmatch(prediction_id):  # e.g. a NUL byte, which PG refuses
        raise NotFoundError(f"no prediction {prediction_id!r}")
    return prediction_id, fmt


def parse_query(request: Request) -> tuple[ChartKind, str | None, int]:
    """``kind`` (waterfall, bar), ``class`` (a class of the task), ``top`` (features shown
    by name before the rest fold into one row)."""
    params = request.query_params
    try:
        kind = ChartKind(params.get("kind", ChartKind.WATERFALL.value).lower())
    except ValueError:
        raise BadRequestError(
            f"unknown chart kind {params['kind']!r}; use one of "
            f"{', '.join(k.value for k in ChartKind)}") from None
    top_text = params.get("top", str(TOP_FEATURES))
    if not top_text.isdigit() or not 1 <= int(top_text) <= TOP_FEATURES_MAX:
        raise BadRequestError(f"top must be a whole number from 1 to {TOP_FEATURES_MAX}, "
                              f"got {top_text!r}")
    return kind, params.get("class"), int(top_text)


def error_response(exc: ArbiterError) -> JSONResponse:
    """The same error shape as GraphQL's: a message and a stable code."""
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"errors": [{"message": str(exc), "extensions": {"code": exc.code}}]}
    return JSONResponse(body, status_code=status, headers=headers)
