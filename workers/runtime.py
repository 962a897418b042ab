"""Everything a process needs to run jobs: broker, actors, outbox relay, and (in embedded
mode, or in ``arbiter worker``) a Dramatiq worker consuming the queue in-process."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import dramatiq
import redis.asyncio as aredis
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.engine import SessionsPerLoop
from app.events.bus import EventBus, build_bus
from app.ml.task import TaskSpec, load_tasks
from app.releases.shadows import ShadowBackfill
from app.settings import Settings
from app.training.jobs import JobContext
from workers.actors import register
from workers.broker import build_broker, stop_worker
from workers.relay import OutboxRelay

WORKER_THREADS = 2
WORKER_STOP_MS = 10_000
# How long the in-process broker's consumer and threads wait for a message before looking
# again: stop() waits out one wait per stage, 1.8 s at Dramatiq's default of 1 s, and every
# server (each test's too) stops. Polling memory 10 times a second costs nothing; Redis
# workers keep the default so they do not poll Redis more often.
EMBEDDED_POLL_MS = 100


class JobRuntime:
    """Start with ``start()`` inside the process's event loop; ``stop()`` at shutdown."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession],
                 consume: bool, events: EventBus | None = None,
                 tasks: dict[str, TaskSpec] | None = None) -> None:
        self.broker = build_broker(settings.redis_url, settings.redis_namespace)
        self.redis_url = settings.redis_url
        self._worker_sessions = SessionsPerLoop(settings.resolved_database_url)
        # A worker process only publishes; a server passes the bus its subscribers use.
        self._owns_events = events is None
        self.events = bus = events if events is not None else build_bus(settings, listen=False)
        # A server passes the tasks its registry already loaded; a worker reads them here.
        tasks = tasks if tasks is not None else load_tasks(settings.tasks_dir)

        def job_context() -> JobContext:
            return JobContext(self._worker_sessions(), tasks, settings.artifacts_dir, bus,
                              stale_seconds=settings.training_stale_seconds)

        backfill = ShadowBackfill(settings.artifacts_dir,
                                  settle_seconds=settings.shadow_settle_seconds)
        self.actors = register(self.broker, self._worker_sessions, self.events, job_context,
                               backfill)
        self.relay = OutboxRelay(sessions, self.actors, sweep_seconds=settings.lease_sweep_seconds)
        poll_ms = EMBEDDED_POLL_MS if settings.redis_url is None else 1000
        self.worker = (dramatiq.Worker(self.broker, worker_threads=WORKER_THREADS,
                                       worker_timeout=poll_ms)
                       if consume else None)
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._owns_events:
            await self.events.start()  # a worker's bus: it tells of events Redis dropped
        if self.worker is not None:
            self.worker.start()
        self._relay_task = asyncio.create_task(self.relay.run())

    async def broker_status(self, timeout: float) -> str:
        """"ok", or "stopped" when the in-process worker's threads died; raises when Redis,
        the broker jobs go to, does not answer a ping within ``timeout``."""
        if self.redis_url is not None:
            client = aredis.Redis.from_url(self.redis_url, socket_connect_timeout=timeout,
                                           socket_timeout=timeout)
            try:
                await asyncio.wait_for(client.ping(), timeout)
                return "ok"
            finally:
                await client.aclose()
        if self.worker is None:
            return "ok"  # this process only relays; nothing of its own to check
        alive = sum(t.is_alive() for t in self.worker.workers)
        return "ok" if alive == WORKER_THREADS else "stopped"

    async def stop(self) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task
        if self.worker is not None:
            worker = self.worker
            await anyio.to_thread.run_sync(lambda: stop_worker(worker, WORKER_STOP_MS))
        self.broker.close()
        if self._owns_events:
            await self.events.stop()
