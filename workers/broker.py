"""The Dramatiq broker: Redis when ``ARBITER_REDIS_URL`` is set, else in-process."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries
from dramatiq.middleware.asyncio import AsyncIO

from workers.metrics import JobMetrics


def build_broker(redis_url: str | None, namespace: str) -> dramatiq.Broker:
    """A broker with asyncio support (our actors are coroutines using the async DB layer)."""
    broker: dramatiq.Broker = (RedisBroker(url=redis_url, namespace=namespace) if redis_url
                               else StubBroker())
    broker.add_middleware(AsyncIO())
    broker.add_middleware(JobMetrics(), before=Retries)
    return broker
