"""Storing predictions: with the review items of the routed ones and their audit events, in
one transaction per group of concurrent callers (group commit)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.audit import state
from app.db.bulk import insert_rows
from app.db.rows import table_of, values_of
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


def commit_input(p: Prediction, values: dict[str, Any]) -> None:
    """Salt the input's commitment (16 random bytes kept beside the input and erased with
    it: no one can confirm a guessed input once it is gone)."""
    salt = secrets.token_hex(16)
    commitment = state.input_commitment(salt, p.input)
    values["input_salt"], values["input_commitment"] = salt, commitment
    p.input_salt, p.input_commitment = salt, commitment


def audit_entry(p: Prediction, values: dict[str, Any], actor: str,
                item: dict[str, Any] | None) -> audit.Entry:
    """The audit record of a prediction: its release, answer and routing decision, and the
    commitments to its row and its review item's. The log commits to the input by its
    salted hash (the input itself stays in ``predictions``)."""
    commits = state.commit_rows("predictions", [values])
    if item is not None:
        commits.update(state.commit_rows("review_items", [item]))
    return audit.Entry(audit.Kind.PREDICTION_MADE, actor, "prediction", p.id, {
        "release": p.release_version, "label": p.label, "confidence": p.confidence,
        # Reason codes only: their details (which may quote input values) are committed
        # with the row, never written into the log.
        "route": p.route, "reasons": [r["code"] for r in p.reasons],
        "inputCommitment": p.input_commitment, "idempotencyKey": p.idempotency_key,
        "reviewItem": item["id"] if item is not None else None}, p.task, commits)


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


async def _insert(conn: AsyncConnection, predictions: list[dict[str, Any]],
                  items: list[dict[str, Any]]) -> None:
    await conn.run_sync(insert_rows, table_of(Prediction), predictions)
    await conn.run_sync(insert_rows, table_of(ReviewItem), items)


_ENTRIES_PER_STEP = 500  # audit entries made between two turns of the event loop


async def _entries(group: list[Commit], by_id: dict[str, dict[str, Any]],
                   items: dict[str, dict[str, Any]]) -> list[audit.Entry]:
    """The audit entries of the group, made while its rows are inserted: the event loop
    gets a turn every few hundred, so the INSERTs move on (the database, or the SQLite
    driver's thread, does that work without this thread)."""
    entries: list[audit.Entry] = []
    for c in group:
        for p in c.records:
            if len(entries) % _ENTRIES_PER_STEP == 0:  # the first turn starts the INSERTs
                await asyncio.sleep(0)
            entries.append(audit_entry(p, by_id[p.id], c.actor, items.get(p.id)))
    return entries


async def _store_together(sessions: async_sessionmaker[AsyncSession], events: EventBus,
                          group: list[Commit]) -> None:
    records = [p for c in group for p in c.records]
    opened = {p.id: open_review_item(c.policies[p.release_id], p)
              for c in group for p in c.records if p.route == Route.REVIEW}
    values = [values_of(p) for p in records]
    for p, v in zip(records, values, strict=True):
        commit_input(p, v)
    items = {i.prediction_id: values_of(i) for i in opened.values()}
    by_id = {p.id: v for p, v in zip(records, values, strict=True)}
    async with sessions() as session, session.begin():
        # Bulk INSERTs of prepared tuples (COPY on PostgreSQL; one statement per table, no
        # unit of work): the returned objects stay as built, outside any session.
        conn = await session.connection()
        inserting = asyncio.ensure_future(_insert(conn, values, list(items.values())))
        try:
            entries = await _entries(group, by_id, items)
        finally:
            await asyncio.wait([inserting])
        inserting.result()  # its error, if it failed
        audit.record(session, entries)
        # One count per task for the whole group, not per item: this path is hot.
        waiting = await waiting_by_task(session, {i.task for i in opened.values()})
    await announce(events, stored_events(values, list(opened.values()), waiting))  # committed
