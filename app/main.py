"""Composition root: builds settings-driven parts and wires them into the Starlette app.
Nothing imports this module but the CLI and tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.types.unset import UNSET, UnsetType

from app import metrics
from app.access.keys import KeyVerifier
from app.audit.checkpoints import log_key
from app.audit.log import bound_text
from app.audit.sequencer import CheckpointPolicy, Sequencer
from app.db.engine import make_engine, make_sessionmaker
from app.events.bus import EventBus, LocalBus, build_bus
from app.http.authn import ApiKeyAuth, Verify
from app.http.body_limit import BodySizeLimit
from app.http.explanations import ExplanationPictures
from app.http.graphql_requests import GraphQLOverHTTP
from app.http.health import Health
from app.http.metrics import MetricsEndpoint, ScrapeGauges
from app.http.requests import RequestObserver
from app.logs import configure_logging
from app.ml.task import load_tasks
from app.predictions.batching import Batcher, InferencePool
from app.predictions.inference import run_models
from app.predictions.services import Services
from app.predictions.store import commit_group
from app.releases.registry import Registry
from app.releases.shadows import ShadowScorer
from app.settings import Settings
from graphql_schema.extensions.rates import KeyRates
from graphql_schema.permissions import Context
from graphql_schema.schema import build_schema
from graphql_schema.subscriptions import KeepAliveHandler, authenticate, websocket_options
from web.pages import graphiql_page, page_routes
from workers.runtime import JobRuntime

log = logging.getLogger("arbiter")


class ArbiterGraphQL(GraphQLOverHTTP):
    """Strawberry's ASGI app with our context (services + the authenticated caller), answering
    malformed HTTP requests as GraphQL over HTTP says (``app.http.graphql_requests``)."""

    graphql_transport_ws_handler_class = KeepAliveHandler

    def __init__(self, services: Services, verify: Verify, rates: KeyRates) -> None:
        settings = services.settings
        super().__init__(build_schema(settings, rates), **websocket_options(settings),
                         graphql_ide=None if settings.production else "graphiql")
        self.services = services
        self.verify = verify

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        await authenticate(context, self.verify)  # subscriptions authenticate at connect
        return UNSET

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        principal = request.scope.get("state", {}).get("principal")
        return Context(self.services, principal, self.verify, request, response)

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_page()  # its assets from this server, not a CDN


def build_services(settings: Settings) -> tuple[Services, Any]:
    """The services and the engine (to dispose of at shutdown)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    registry = Registry(
        load_tasks(settings.tasks_dir),
        sessions,
        settings.artifacts_dir,
        settings.release_refresh_seconds,
    )
    return wire_services(settings, sessions, registry, build_bus(settings)), engine


def wire_services(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                  registry: Registry, events: EventBus | None = None) -> Services:
    """The prediction path's parts over these sessions and registry: the inference threads,
    the shadow scorer, and the micro-batchers of ensemble calls and of commits. The one
    place that builds ``Services`` (``events`` default: notices within this process)."""
    events = events if events is not None else LocalBus()
    bound_text(sessions, settings.audit_text_max_chars)
    pool = InferencePool(settings.inference_threads)
    window = settings.batch_window_ms / 1000
    return Services(
        settings, sessions, registry, events, inference=pool,
        shadows=ShadowScorer(sessions, pool, settings.shadow_max_in_flight),
        model_calls=Batcher("inference", functools.partial(run_models, pool),
                            settings.batch_max_rows, window, size=lambda item: len(item[1])),
        commits=Batcher("commit", functools.partial(commit_group, sessions, events),
                        settings.batch_max_rows, window, size=lambda item: len(item.records)),
    )


def build_app(settings: Settings) -> Starlette:
    services, engine = build_services(settings)
    verifier = KeyVerifier(services.sessions, settings.key_cache_seconds)

    # Embedded (no Redis): this process also consumes the jobs. With Redis, `arbiter worker`
    # processes do, and this one only relays its outbox.
    jobs = JobRuntime(settings, services.sessions, consume=settings.redis_url is None,
                      events=services.events, tasks=services.registry.tasks)
    services.wake_relay = jobs.relay.wake
    sequencer = Sequencer(
        services.sessions, log_key(settings.audit_signing_key, settings.data_dir,
                                   settings.production),
        CheckpointPolicy(settings.audit_checkpoint_seconds, settings.audit_checkpoint_events),
        settings.audit_sequence_seconds)
    health = Health(engine, services.registry, jobs.broker_status, settings.ready_timeout_seconds)
    scrape = MetricsEndpoint(
        ScrapeGauges(services.sessions, services.registry, settings.ready_timeout_seconds),
        settings.metrics_token)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(services.registry.load_all())
        # Once the models are loaded, move every object so far out of the collector's reach:
        # full collections then walk only what requests allocate. Measured with
        # bench/perf_report.py: p99 at 32 clients 427-449 ms -> 248-300 ms, +15 % pred/s.
        loading.add_done_callback(lambda _: gc.freeze())
        await services.events.start()
        await jobs.start()
        sequencing = asyncio.create_task(sequencer.run())
        try:
            yield
        finally:
            loading.cancel()
            sequencing.cancel()
            # their cleanup (the sequencer's rollback) while the loop and the engine still run
            await asyncio.gather(loading, sequencing, return_exceptions=True)
            await jobs.stop()
            await services.drain()  # batches in flight, shadow scoring: before the engine goes
            services.close()
            await services.events.stop()
            await rates.aclose()
            await engine.dispose()
            metrics.process_exited()

    rates = KeyRates(settings)
    graphql = BodySizeLimit(
        ApiKeyAuth(ArbiterGraphQL(services, verifier.verify, rates), verifier.verify),
        settings.max_body_bytes)
    pictures = ExplanationPictures(services, verifier.verify)
    app = Starlette(
        routes=[
            Route("/graphql", graphql),  # every method: the view answers 405 in JSON
            WebSocketRoute("/graphql", graphql),
            *health.routes(),
            Route("/metrics", scrape.scrape),
            Route("/explanations/{name}", pictures.get),
            *page_routes(),
        ],
        middleware=[Middleware(RequestObserver)],
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def create_app() -> Starlette:
    """Factory for uvicorn (``app.main:create_app``): settings from the environment; it
    configures the logging of the process it runs in (each of ``--workers N``)."""
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return build_app(settings)
