"""The actors. Each receives ids, opens its own session, and is safe to run twice."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import dramatiq
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.events import EventBus
from review import notices, queue

log = logging.getLogger("arbiter.workers")

Sessions = Callable[[], async_sessionmaker[AsyncSession]]


def _expire_lease(sessions: Sessions, events: EventBus) -> Callable[..., Awaitable[None]]:
    async def expire_lease(item_id: str, lease_version: int, **_: Any) -> None:
        """Return the item to the queue if this very lease is still unsettled."""
        if await queue.expire_lease(sessions(), item_id, lease_version):
            log.info("lease %s of item %s expired", lease_version, item_id)
            await notices.announce_expired(events, sessions(), [item_id])
    return expire_lease


def _expire_leases(sessions: Sessions, events: EventBus) -> Callable[..., Awaitable[None]]:
    async def expire_leases(**_: Any) -> None:
        """Sweep every lapsed lease back to the queue (safety net for lost messages)."""
        expired = await queue.expire_leases(sessions())
        if expired:
            log.info("returned %d lapsed leases to the queue", len(expired))
            await notices.announce_expired(events, sessions(), expired)
    return expire_leases


ACTORS = {"review.expire_lease": _expire_lease, "review.expire_leases": _expire_leases}


def register(broker: dramatiq.Broker, sessions: Sessions,
             events: EventBus) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare every actor on ``broker``; ``sessions`` gives the calling loop's sessions,
    ``events`` is where actors publish what they changed."""
    return {name: dramatiq.actor(actor_name=name, broker=broker, queue_name="arbiter",
                                 max_retries=5)(make(sessions, events))
            for name, make in ACTORS.items()}
