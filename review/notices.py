"""Review-queue events, published once a change of the queue has committed (app.events.bus)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import ReviewItem
from app.events import announcements
from app.events.bus import EventBus
from app.events.topics import ReviewChange, review_event, review_topic
from review.items import waiting_by_task


async def waiting_items(session: AsyncSession, task: str) -> int:
    """Items of ``task`` waiting for a reviewer (pending or escalated)."""
    return (await waiting_by_task(session, [task]))[task]


async def announce(bus: EventBus, sessions: async_sessionmaker[AsyncSession],
                   item: ReviewItem, change: ReviewChange) -> None:
    """Publish ``item``'s committed ``change`` with the task's waiting count."""
    async with sessions() as session:
        waiting = await waiting_items(session, item.task)
    event = review_event(item, change, waiting)
    await announcements.announce(bus, [(review_topic(item.task), event)])


async def announce_expired(bus: EventBus, sessions: async_sessionmaker[AsyncSession],
                           item_ids: Sequence[str]) -> None:
    """Publish the items whose lapsed leases were returned to the queue."""
    for item_id in item_ids:
        async with sessions() as session:
            item = await session.get(ReviewItem, item_id)
        if item is not None:
            await announce(bus, sessions, item, ReviewChange.EXPIRED)
