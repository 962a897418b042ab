"""Claiming review items: a lease is taken by one compare-and-set UPDATE that returns the
row it wrote (Core, so no ORM object is synchronised behind the caller's back).

On PostgreSQL one statement picks the next item, skipping the rows other claimers hold
(``FOR UPDATE SKIP LOCKED``), computes the expiry from the item's release and leases it:
fifty claimers take fifty items at once, each in one round trip. Only when every candidate
is locked (the queue's last items) does a claim wait for one, and it answers "nothing
waits" only when a fresh read finds no item it may take. SQLite has one writer: a claim
reads its candidate and the release's lease length, then takes it by version.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, exists, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.access.roles import Principal
from app.audit import log as audit
from app.db.rows import built
from app.db.tables import Release, Review, ReviewItem
from app.db.types import UTCDateTime, utcnow
from app.events.outbox import enqueue
from app.metrics import LEASE_EXPIRIES
from review.items import ItemStatus

ITEMS = ReviewItem.__table__  # type: ignore[attr-defined]
RELEASES = Release.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Lease:
    """A reviewer's exclusive hold on an item until ``expires_at``."""

    token: str
    expires_at: datetime
    item: ReviewItem


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def audit_item(session: AsyncSession, kind: audit.Kind, actor: str, item: ReviewItem,
               **payload: object) -> None:
    audit.append(session, kind, actor, "review_item", item.id,
                 {"prediction": item.prediction_id, **payload}, item.task)


def claimable(now: datetime) -> Any:
    """Waiting for a reviewer, or held by a lease that has lapsed."""
    waiting = ITEMS.c.status.in_([ItemStatus.PENDING, ItemStatus.ESCALATED])
    lapsed = and_(ITEMS.c.status == ItemStatus.CLAIMED, ITEMS.c.lease_expires_at < now)
    return or_(waiting, lapsed)


def _candidates(task: str, reviewer_id: int, item_id: str | None, now: datetime) -> Any:
    """Items of ``task`` this reviewer may claim now (never one they reviewed), best first."""
    reviewed = exists().where(col(Review.item_id) == ITEMS.c.id,
                              col(Review.reviewer_id) == reviewer_id)
    query = select(ITEMS.c.id, ITEMS.c.status, ITEMS.c.lease_version, ITEMS.c.release_version)
    query = query.where(ITEMS.c.task == task, claimable(now), ~reviewed)
    if item_id is not None:
        query = query.where(ITEMS.c.id == item_id)
    return query.order_by(ITEMS.c.priority.desc(), ITEMS.c.created_at, ITEMS.c.id).limit(1)


def _lease_length(default: float) -> Any:
    """The item's release's ``lease_seconds`` override, else ``default`` (PostgreSQL)."""
    override = (select(RELEASES.c.routing["lease_seconds"].as_float())
                .where(RELEASES.c.task == ITEMS.c.task,
                       RELEASES.c.version == ITEMS.c.release_version)
                .scalar_subquery())
    return func.coalesce(override, default)


async def _core(session: AsyncSession, statement: Any) -> Any:
    """Run a Core statement on the session's connection (in its transaction): rows, no ORM."""
    return await (await session.connection()).execute(statement)


def _values(token: str, reviewer: Principal) -> dict[str, Any]:
    return {"status": ItemStatus.CLAIMED, "lease_version": ITEMS.c.lease_version + 1,
            "lease_token_hash": token_hash(token), "lease_holder_id": reviewer.key_id}


@dataclass(frozen=True)
class _Taken:
    item: ReviewItem
    lapsed: bool  # it was held by a lease that had lapsed


def _taken(row: Row[Any], was: str) -> _Taken:
    values = {c.key: row._mapping[c.key] for c in ITEMS.columns}
    return _Taken(built(ReviewItem, values), was == ItemStatus.CLAIMED)


async def _take_postgresql(session: AsyncSession, task: str, reviewer: Principal,
                           item_id: str | None, token: str, default_seconds: float,
                           now: datetime, skip_locked: bool) -> _Taken | None:
    """Pick, lock and lease in one statement; None when no candidate is left (with
    ``skip_locked``: none that another claimer is not taking right now)."""
    picked = (_candidates(task, reviewer.key_id, item_id, now)
              .with_for_update(skip_locked=skip_locked).cte("picked"))
    seconds = _lease_length(default_seconds)
    expires = literal(now, UTCDateTime) + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    statement = (update(ITEMS).where(ITEMS.c.id == picked.c.id)
                 .values(**_values(token, reviewer), lease_expires_at=expires)
                 .returning(*ITEMS.columns, picked.c.status.label("was")))
    row = (await _core(session, statement)).first()
    return None if row is None else _taken(row, row.was)


async def _take_sqlite(session: AsyncSession, task: str, reviewer: Principal,
                       item_id: str | None, token: str, default_seconds: float,
                       now: datetime) -> _Taken | None:
    """Read the candidate and its release's lease length, take it if its version is still
    the one read (SQLite: the one writer; a lost race leaves it unchanged)."""
    found = (await _core(session, _candidates(task, reviewer.key_id, item_id, now))).first()
    if found is None:
        return None
    routing = (await _core(session, select(RELEASES.c.routing).where(
        RELEASES.c.task == task, RELEASES.c.version == found.release_version))).scalar()
    seconds = float((routing or {}).get("lease_seconds", default_seconds))
    statement = (update(ITEMS)
                 .where(ITEMS.c.id == found.id, ITEMS.c.lease_version == found.lease_version,
                        claimable(now))
                 .values(**_values(token, reviewer),
                         lease_expires_at=now + timedelta(seconds=seconds))
                 .returning(*ITEMS.columns))
    row = (await _core(session, statement)).first()
    return None if row is None else _taken(row, found.status)


async def _anything_claimable(session: AsyncSession, task: str, reviewer_id: int,
                              item_id: str | None) -> bool:
    """A fresh read: does an item this reviewer may take wait (locked or not)?"""
    query = _candidates(task, reviewer_id, item_id, utcnow())
    return (await _core(session, query)).first() is not None


async def _take(session: AsyncSession, task: str, reviewer: Principal, item_id: str | None,
                token: str, default_seconds: float, now: datetime) -> _Taken | bool:
    """The item taken; else True when one may still be taken (retry), False when none."""
    args = (session, task, reviewer, item_id, token, default_seconds, now)
    if session.get_bind().dialect.name != "postgresql":
        taken = await _take_sqlite(*args)
        if taken is not None:
            return taken
        return await _anything_claimable(session, task, reviewer.key_id, item_id)
    # Skip the rows others are taking; when all are, wait for one (each statement of a
    # READ COMMITTED transaction reads afresh, and the wait ends with the holder's).
    for skip_locked in (True, False):
        taken = await _take_postgresql(*args, skip_locked=skip_locked)
        if taken is not None:
            return taken
    return await _anything_claimable(session, task, reviewer.key_id, item_id)


async def _lease(session: AsyncSession, task: str, reviewer: Principal, item_id: str | None,
                 default_seconds: float) -> Lease | bool:
    token = secrets.token_urlsafe(32)
    taken = await _take(session, task, reviewer, item_id, token, default_seconds, utcnow())
    if not isinstance(taken, _Taken):
        return taken
    item = taken.item
    expires = item.lease_expires_at
    assert expires is not None  # just written
    enqueue(session, "review.expire_lease",
            {"item_id": item.id, "lease_version": item.lease_version}, not_before=expires)
    audit_item(session, audit.Kind.REVIEW_CLAIMED, reviewer.actor, item,
               leaseVersion=item.lease_version, expiresAt=expires.isoformat())
    if taken.lapsed:  # a lapsed lease, taken over
        LEASE_EXPIRIES.labels(item.task).inc()
    return Lease(token, expires, item)


async def claim(sessions: async_sessionmaker[AsyncSession], task: str, reviewer: Principal,
                lease_seconds: float, item_id: str | None = None) -> Lease | None:
    """Lease the next item by priority and age (or the named one) for its release's lease
    length (``lease_seconds`` unless the release overrides it); None only when no item is
    claimable by this reviewer. The lease's expiry job and audit event are written in the
    same transaction. A retry follows another claimer's progress, so this ends."""
    while True:
        async with sessions() as session, session.begin():
            lease = await _lease(session, task, reviewer, item_id, lease_seconds)
        if isinstance(lease, Lease):
            return lease
        if lease is False:
            return None
