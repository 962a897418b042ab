"""What a reviewer does at the queue, each step in a transaction of its own (``review.queue``)
and announced to subscribers once committed (``review.notices``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.access.roles import Principal, Role
from app.db.tables import Prediction, ReviewItem
from app.errors import NotFoundError
from app.events.bus import EventBus
from app.events.topics import ReviewChange
from app.ml.task import ReviewPolicy, TaskSpec, release_policy
from app.releases.store import release_by_version
from review import notices, queue


class Desk(Protocol):
    """What the desk needs of the process's services (the composition root's ``Services``)."""

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def wake_relay(self) -> Callable[[], None]:
        """Sends committed outbox rows (a lease's expiry job) now."""


async def claim(desk: Desk, task: TaskSpec, reviewer: Principal,
                item_id: str | None = None) -> queue.Lease | None:
    """``queue.claim`` for the task's lease time, its expiry job sent and the claim
    announced; None when nothing is waiting for this reviewer."""
    lease = await queue.claim(desk.sessions, task.name, reviewer, task.review.lease_seconds,
                              item_id)
    if lease is not None:
        desk.wake_relay()
        await notices.announce(desk.events, desk.sessions, lease.item, ReviewChange.CLAIMED)
    return lease


async def submit(desk: Desk, token: str, reviewer: Principal, label: str, comment: str,
                 classes_of: Callable[[str], Sequence[str]]) -> ReviewItem:
    """``queue.submit``, announced once committed."""
    item = await queue.submit(desk.sessions, token, reviewer, label, comment, classes_of)
    await notices.announce(desk.events, desk.sessions, item, ReviewChange.REVIEWED)
    return item


async def release(desk: Desk, token: str, actor: str) -> ReviewItem:
    """``queue.release``, announced once committed."""
    item = await queue.release(desk.sessions, token, actor)
    await notices.announce(desk.events, desk.sessions, item, ReviewChange.RELEASED)
    return item


async def item_prediction(session: AsyncSession, item: ReviewItem) -> Prediction:
    """The prediction under review (a foreign key: it exists while its item does)."""
    found = await session.get(Prediction, item.prediction_id)
    if found is None:
        raise NotFoundError(f"no prediction {item.prediction_id!r}")
    return found


async def item_policy(session: AsyncSession, task: TaskSpec, item: ReviewItem) -> ReviewPolicy:
    """The review policy of the release that routed the item: the task's, with the
    release's routing overrides (``setReleaseRouting``) applied."""
    release = await release_by_version(session, item.task, item.release_version)
    return release_policy(task.review, release.routing)


async def explanation_hidden(session: AsyncSession, task: TaskSpec, item: ReviewItem,
                             role: Role, revealed: bool) -> bool:
    """Reviewers of an item whose release hides explanations see one only when they ask."""
    if revealed or role is not Role.REVIEWER:
        return False
    return (await item_policy(session, task, item)).hide_explanation
