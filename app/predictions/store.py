"""Storing predictions: with the review items of the routed ones and their audit events, in
one transaction per group of concurrent callers (group commit)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.rows import values_of
from app.db.tables import Prediction, ReviewItem
from app.events.announcements import announce
from app.events.bus import EventBus
from app.events.topics import stored_events
from app.ml.routing import Route
from app.ml.task import ReviewPolicy
from review.items import open_review_item, waiting_by_task


@dataclass
class Commit:
    """One caller's predictions to store, with what their review items need."""

    records: list[Prediction]
    policies: dict[int, ReviewPolicy]  # release id -> review policy of the release
    actor: str  # who acts in the audit log


def audit_entry(p: Prediction, actor: str, item: ReviewItem | None) -> audit.Entry:
    """The audit record of a prediction: its release, answer and routing decision. The log
    commits to the input by its hash (the input itself stays in ``predictions``)."""
    return audit.Entry(audit.Kind.PREDICTION_MADE, actor, "prediction", p.id, {
        "release": p.release_version, "label": p.label, "confidence": p.confidence,
        "route": p.route, "reasons": [{"code": r["code"], "detail": r["detail"]}
                                      for r in p.reasons],
        "inputHash": p.input_hash, "idempotencyKey": p.idempotency_key,
        "reviewItem": item.id if item is not None else None}, p.task)


async def commit_group(sessions: async_sessionmaker[AsyncSession], events: EventBus,
                       group: list[Commit]) -> list[Exception | None]:
    """One transaction for the group; if it fails, each caller's own, so that one
    caller's conflict (a repeated idempotency key) fails that caller alone."""
    try:
        await _store_together(sessions, events, group)
        return [None] * len(group)
    except Exception as exc:
        if len(group) == 1:
            return [exc]
    outcomes: list[Exception | None] = []
    for one in group:
        try:
            await _store_together(sessions, events, [one])
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


async def _store_together(sessions: async_sessionmaker[AsyncSession], events: EventBus,
                          group: list[Commit]) -> None:
    records = [p for c in group for p in c.records]
    opened = {p.id: open_review_item(c.policies[p.release_id], p)
              for c in group for p in c.records if p.route == Route.REVIEW}
    values = [values_of(p) for p in records]
    async with sessions() as session, session.begin():
        # Bulk INSERTs of plain values (one statement per table, no unit of work): the
        # returned objects stay as built, outside any session.
        conn = await session.connection()
        await conn.execute(insert(Prediction), values)
        if opened:
            await conn.execute(insert(ReviewItem), [values_of(i) for i in opened.values()])
        audit.record(session, [audit_entry(p, c.actor, opened.get(p.id))
                               for c in group for p in c.records])
        # One count per task for the whole group, not per item: this path is hot.
        waiting = await waiting_by_task(session, {i.task for i in opened.values()})
    await announce(events, stored_events(values, list(opened.values()), waiting))  # committed
