"""Reading the audit log: pages of events, every event of a time range or a subject, and
exports (JSON Lines) that re-verify on their own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import merkle
from app.audit.log import canonical, entry_of, legacy_hash, stamp
from app.db.pagination import Page, decode_cursor, encode_cursor
from app.db.tables import AuditEvent
from app.db.time_range import check_time_range

PAGE_ROWS = 1000


def _filters(since: datetime | None, until: datetime | None, kind: str | None,
             task: str | None) -> list[Any]:
    filters: list[Any] = []
    if since is not None:
        filters.append(col(AuditEvent.at) >= since)
    if until is not None:
        filters.append(col(AuditEvent.at) < until)
    if kind is not None:
        filters.append(col(AuditEvent.kind) == kind)
    if task is not None:
        filters.append(col(AuditEvent.task) == task)
    return filters


def _event_id(key: str) -> int:
    prefix, _, number = key.partition(":")
    if prefix != "audit":
        raise ValueError(prefix)
    return int(number)


async def list_events(session: AsyncSession, *, since: datetime | None = None,
                      until: datetime | None = None, kind: str | None = None,
                      task: str | None = None, first: int = 50,
                      after: str | None = None) -> Page[AuditEvent]:
    """Events in ``[since, until)`` of a kind and task, oldest first, after a cursor."""
    check_time_range(since, until)
    filters = _filters(since, until, kind, task)
    total = (await session.exec(select(func.count()).select_from(AuditEvent)
                                .where(*filters))).one()
    page_filters = list(filters)
    if after is not None:
        last = decode_cursor(after, _event_id, hint="of auditEvents")
        page_filters.append(col(AuditEvent.id) > last)
    rows = list((await session.exec(select(AuditEvent).where(*page_filters)
                                    .order_by(col(AuditEvent.id)).limit(first + 1))).all())
    return Page(rows[:first], [encode_cursor(f"audit:{r.id}") for r in rows[:first]],
                len(rows) > first, total)


async def iter_events(sessions: async_sessionmaker[AsyncSession], since: datetime | None,
                      until: datetime | None,
                      page_rows: int = PAGE_ROWS) -> AsyncIterator[AuditEvent]:
    """Every event in ``[since, until)`` in id order, read a page at a time."""
    check_time_range(since, until)
    filters = _filters(since, until, None, None)
    after = 0
    while True:
        async with sessions() as session:
            page = list((await session.exec(
                select(AuditEvent).where(*filters, col(AuditEvent.id) > after)
                .order_by(col(AuditEvent.id)).limit(page_rows))).all())
        for e in page:
            yield e
        if len(page) < page_rows:
            return
        after = page[-1].id


async def subject_events(session: AsyncSession,
                         subjects: Sequence[tuple[str, str]]) -> list[AuditEvent]:
    """Every event about any of these (subject type, subject id), in id order."""
    found: list[AuditEvent] = []
    for subject_type, subject_id in subjects:
        found += (await session.exec(select(AuditEvent).where(
            AuditEvent.subject_type == subject_type,
            AuditEvent.subject_id == subject_id))).all()
    return sorted(found, key=lambda e: e.id)


def export_line(e: AuditEvent, extra: dict[str, Any] | None = None) -> str:
    """One JSON Lines record of an event: every hashed field under its hashed name (so the
    export re-verifies with ``verify_lines``), plus unhashed ``extra``."""
    record: dict[str, Any] = {"id": e.id, "at": stamp(e.at), "kind": e.kind, "actor": e.actor,
                              "task": e.task, "subject_type": e.subject_type,
                              "subject_id": e.subject_id, "payload": json.loads(e.payload),
                              "prev_hash": e.prev_hash, "hash": e.hash}
    if extra:
        record["attached"] = extra
    return canonical(record)


def parse_line(line: str) -> AuditEvent:
    """An exported line back into an event (to re-verify an export)."""
    d = json.loads(line)
    return AuditEvent(id=d["id"], at=datetime.fromisoformat(d["at"]), kind=d["kind"],
                      actor=d["actor"], task=d["task"], subject_type=d["subject_type"],
                      subject_id=d["subject_id"], payload=canonical(d["payload"]),
                      prev_hash=d["prev_hash"], hash=d["hash"])


def own_hash_holds(e: AuditEvent) -> bool:
    """An event matches its own hash: its leaf hash, or a legacy event's chain hash."""
    if e.prev_hash is not None:
        return legacy_hash(e) == e.hash
    return merkle.leaf_hash(entry_of(e)).hex() == e.hash


@dataclass(frozen=True)
class ExportCheck:
    """An export re-verified: ``broken_event_id`` is the first line changed since."""

    ok: bool
    checked: int
    broken_event_id: int | None = None
    reason: str | None = None


def verify_lines(lines: Sequence[str]) -> ExportCheck:
    """Re-verify an export: each event against its own hash (whether the events are in the
    log's tree is what ``arbiter audit verify`` and proofs answer)."""
    for n, line in enumerate(lines):
        try:
            e = parse_line(line)
        except (ValueError, KeyError, TypeError) as exc:
            return ExportCheck(False, n, None, f"line {n + 1} is not an exported event: {exc}")
        if not own_hash_holds(e):
            return ExportCheck(False, n, e.id, f"event {e.id}: its content does not match "
                               "its hash (changed after it was written)")
    return ExportCheck(True, len(lines))
