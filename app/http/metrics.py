"""``GET /metrics``: Prometheus text, plus gauges read at scrape time (review queue from the
database, LIVE release versions from this process's registry).

The database is read on the event loop with the async driver before the exposition is
rendered (off the loop, since it reads the multiprocess files), at most every
``CACHE_SECONDS`` and within a timeout: a slow database never blocks other requests, and a
scrape then shows the last values read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Iterator

import anyio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.db.types import utcnow
from app.metrics import CONTENT_TYPE, exposition
from app.releases.registry import Registry
from review.queue import OPEN_STATUSES, QueueCount, open_item_counts

log = logging.getLogger("arbiter.metrics")

CACHE_SECONDS = 5.0


class ScrapeGauges:
    """A collector of values that are read, not counted: queue depth and age per task, and
    the LIVE release version this process serves."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], registry: Registry,
                 timeout: float, cache_seconds: float = CACHE_SECONDS) -> None:
        self.sessions = sessions
        self.registry = registry
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._counts: list[QueueCount] = []
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Re-read the queue when the cached counts are older than ``cache_seconds``."""
        async with self._lock:
            if time.monotonic() - self._read_at < self.cache_seconds:
                return
            try:
                self._counts = await asyncio.wait_for(self._read(), self.timeout)
                self._read_at = time.monotonic()
            except Exception as exc:  # a scrape still answers; /readyz reports the database
                log.warning("review queue gauges not refreshed: %s: %s",
                            type(exc).__name__, exc)

    async def _read(self) -> list[QueueCount]:
        async with self.sessions() as session:
            return await open_item_counts(session)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("arbiter_review_queue_depth",
                                  "Unresolved review items by task and status.",
                                  labels=["task", "status"])
        age = GaugeMetricFamily("arbiter_review_queue_oldest_age_seconds",
                                "Age of the task's oldest unresolved review item (0 if none).",
                                labels=["task"])
        now = utcnow()
        found = {(c.task, c.status): c for c in self._counts}
        for task in sorted(self.registry.tasks):
            for status in OPEN_STATUSES:
                count = found.get((task, status))
                depth.add_metric([task, status], count.items if count else 0)
            oldest = [c.oldest for c in self._counts if c.task == task]
            age.add_metric([task], (now - min(oldest)).total_seconds() if oldest else 0.0)
        live = GaugeMetricFamily("arbiter_live_release_version",
                                 "Version of the LIVE release this process serves.",
                                 labels=["task"])
        for task, version in sorted(self.registry.live_versions().items()):
            live.add_metric([task], version)
        yield from (depth, age, live)


class MetricsEndpoint:
    """``GET /metrics``; with a token configured, only ``Authorization: Bearer <token>``."""

    def __init__(self, gauges: ScrapeGauges, token: str | None) -> None:
        self.gauges = gauges
        self.token = token

    async def scrape(self, request: Request) -> Response:
        if self.token is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(),
                f"Bearer {self.token}".encode()):
            return JSONResponse(
                {"error": "/metrics needs the header Authorization: Bearer "
                          "<ARBITER_METRICS_TOKEN>"}, status_code=401)
        await self.gauges.refresh()
        body = await anyio.to_thread.run_sync(exposition, [self.gauges])
        return Response(body, media_type=CONTENT_TYPE)
