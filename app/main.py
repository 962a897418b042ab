"""Composition root: builds settings-driven parts and wires them into the Starlette app.
Nothing imports this module but the CLI and tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.types.unset import UNSET, UnsetType
from threadpoolctl import threadpool_limits

from app.authn import ApiKeyAuth
from app.body_limit import BodySizeLimit
from app.db.engine import make_engine, make_sessionmaker
from app.events import build_bus
from app.http.explanations import ExplanationPictures
from app.keys import KeyVerifier
from app.ml.task import load_tasks
from app.predictions import Services
from app.registry import Registry
from app.settings import Settings
from graphql_schema.context import Context
from graphql_schema.schema import build_schema
from graphql_schema.websocket import KeepAliveHandler, Verify, authenticate, websocket_options
from web.pages import page_routes
from workers.runtime import JobRuntime

log = logging.getLogger("arbiter")


class ArbiterGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI app with our context (services + the authenticated caller)."""

    graphql_transport_ws_handler_class = KeepAliveHandler

    def __init__(self, services: Services, verify: Verify) -> None:
        settings = services.settings
        super().__init__(build_schema(settings), **websocket_options(settings),
                         graphql_ide=None if settings.production else "graphiql")
        self.services = services
        self.verify = verify

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        await authenticate(context, self.verify)  # subscriptions authenticate at connect
        return UNSET

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        principal = request.scope.get("state", {}).get("principal")
        return Context(self.services, principal, request, response)


def build_services(settings: Settings) -> tuple[Services, Any]:
    """The services and the engine (to dispose of at shutdown)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One BLAS/OpenMP thread per inference call: requests already run in parallel, and
    # OpenMP's fork-join on a single row cost 10x the prediction itself here (measured:
    # 430 ms -> 37 ms per loan_default row on a loaded 2-core machine).
    threadpool_limits(limits=1)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    registry = Registry(
        load_tasks(settings.tasks_dir),
        sessions,
        settings.artifacts_dir,
        settings.release_refresh_seconds,
    )
    return Services(settings, sessions, registry, events=build_bus(settings)), engine


def build_app(settings: Settings) -> Starlette:
    services, engine = build_services(settings)
    verifier = KeyVerifier(services.sessions, settings.key_cache_seconds)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["tasks"] = services.registry.readiness()
        ready = checks["database"] == "ok" and all(v == "ready" for v in checks["tasks"].values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **checks},
            status_code=200 if ready else 503,
        )

    # Embedded (no Redis): this process also consumes the jobs. With Redis, `arbiter worker`
    # processes do, and this one only relays its outbox.
    jobs = JobRuntime(settings, services.sessions, consume=settings.redis_url is None,
                      events=services.events, tasks=services.registry.tasks)
    services.wake_relay = jobs.relay.wake

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(services.registry.load_all())
        await services.events.start()
        await jobs.start()
        try:
            yield
        finally:
            loading.cancel()
            await jobs.stop()
            await services.shadows.drain()  # finish shadow scoring before the engine goes
            await services.events.stop()
            await engine.dispose()

    graphql = BodySizeLimit(ApiKeyAuth(ArbiterGraphQL(services, verifier.verify), verifier.verify),
                            settings.max_body_bytes)
    pictures = ExplanationPictures(services, verifier.verify)
    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/explanations/{name}", pictures.get),
            *page_routes(),
        ],
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_app() -> Starlette:
    """Factory for uvicorn (``app.main:create_app``): settings from the environment."""
    return build_app(Settings())
