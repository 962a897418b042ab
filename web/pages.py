"""Starlette routes of the web pages: ``/review``, ``/audit``, ``/ops`` and ``/static``.

The pages are plain files: no build step, nothing fetched from another origin. They need
no key to load; every request they make carries the key the person typed in."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent
PAGES = ("review", "audit", "ops")
FAVICON = WEB_DIR / "static" / "favicon.svg"

# Scripts, styles, images and connections (GraphQL over HTTP and websockets) stay on this
# origin; a page cannot be framed by another site (clickjacking of promote/rollback).
# blob: images are the explanation pictures /audit fetched itself with the key.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# GraphiQL's editors set inline styles; its scripts, fonts (inlined in its CSS) and
# connections stay on this origin all the same.
GRAPHIQL_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
}


def graphiql_page() -> Response:
    """GraphiQL, served from this server's own files (``GET /graphql`` in a browser)."""
    return FileResponse(WEB_DIR / "graphiql.html", media_type="text/html",
                        headers=GRAPHIQL_HEADERS)


def _page(name: str) -> Route:
    path = WEB_DIR / f"{name}.html"

    async def serve(_: Request) -> Response:
        return FileResponse(path, media_type="text/html", headers=SECURITY_HEADERS)

    return Route(f"/{name}", serve, methods=["GET"], name=f"page:{name}")


async def _favicon(_: Request) -> Response:
    """The icon browsers ask for on every page (and on /graphql) unless a page names one."""
    return FileResponse(FAVICON, media_type="image/svg+xml")


def page_routes() -> list[BaseRoute]:
    """The pages, their assets and the favicon, to mount beside ``/graphql``."""
    return [*(_page(name) for name in PAGES),
            Route("/favicon.ico", _favicon, methods=["GET"], name="favicon"),
            Mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")]
