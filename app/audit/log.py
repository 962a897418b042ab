"""The audit log: an append-only chain of events, each holding the hash of the one before.

``record`` is called by the domain functions *inside their own transaction*, so an event
commits with the change it records, or neither does. It stages the events on the session;
they are written at commit, as the transaction's last step. Appends are serialised: on
PostgreSQL by a transaction-scoped advisory lock, on SQLite by the database's single
write lock, taken right before the chain head is read, so the lock is held for a few
statements and never while the transaction still waits for other locks (no deadlocks).
The id of an event is the head's id + 1, so ids have no gaps; ``verify_chain`` streams
the log in id order and names the first event that is missing, changed, or mislinked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, event, insert, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.pagination import Page, decode_cursor, encode_cursor
from app.db.tables import AuditEvent
from app.db.time_range import check_time_range
from app.db.types import utcnow

GENESIS_HASH = "0" * 64  # the prev_hash of the first event
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serialises appends.
PG_LOCK_KEY = 0x41524249544552  # "ARBITER"
VERIFY_PAGE_ROWS = 1000


class Kind(StrEnum):
    """What an event records."""

    PREDICTION_MADE = "prediction.made"
    REVIEW_CLAIMED = "review.claimed"
    REVIEW_RELEASED = "review.released"
    REVIEW_SUBMITTED = "review.submitted"
    REVIEW_ESCALATED = "review.escalated"
    REVIEW_RESOLVED = "review.resolved"
    LEASE_EXPIRED = "review.lease_expired"
    TRAINING_REQUESTED = "training.requested"
    TRAINING_STARTED = "training.started"
    TRAINING_FINISHED = "training.finished"
    TRAINING_FAILED = "training.failed"
    RELEASE_STORED = "release.stored"
    GATE_DECIDED = "release.gate_decided"
    STAGE_CHANGED = "release.stage_changed"
    ROLLED_BACK = "release.rolled_back"
    ROUTING_CHANGED = "release.routing_changed"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"


@dataclass(frozen=True)
class Entry:
    """An event to append: what happened, who did it, to what."""

    kind: Kind
    actor: str
    subject_type: str
    subject_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    task: str | None = None


# One encoder for every call: ``json.dumps`` with options builds a new one each time (2 µs
# of 7, three times per prediction). Its output is the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, default=str)


def canonical(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no spaces, UTF-8, no NaN."""
    return _CANONICAL.encode(value)


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(event_id: int, at: datetime, kind: str, actor: str, task: str | None,
               subject_type: str, subject_id: str, payload: str, prev_hash: str) -> str:
    """SHA-256 of the canonical JSON of an event's fields and its predecessor's hash.
    ``payload`` is the stored canonical JSON text, hashed as that text."""
    document = {"id": event_id, "at": stamp(at), "kind": kind, "actor": actor, "task": task,
                "subject_type": subject_type, "subject_id": subject_id, "payload": payload,
                "prev_hash": prev_hash}
    return hashlib.sha256(canonical(document).encode()).hexdigest()


def hash_of(e: AuditEvent) -> str:
    return event_hash(e.id, e.at, e.kind, e.actor, e.task, e.subject_type, e.subject_id,
                      e.payload, e.prev_hash)


_PENDING = "arbiter.audit.pending"  # key of staged entries in a session's ``info``


def record(session: AsyncSession, entries: Sequence[Entry]) -> None:
    """Append events in the caller's transaction: they are written as its last step, at
    commit, and vanish with a rollback."""
    if not session.in_transaction():
        raise RuntimeError("audit events are recorded inside a transaction (session.begin())")
    session.sync_session.info.setdefault(_PENDING, []).extend(entries)


def append(session: AsyncSession, kind: Kind, actor: str, subject_type: str,
           subject_id: str, payload: dict[str, Any] | None = None,
           task: str | None = None) -> None:
    """One event, in the caller's transaction (see ``record``)."""
    record(session, [Entry(kind, actor, subject_type, subject_id, payload or {}, task)])


def hold_append_lock(conn: Connection) -> None:
    """Hold the log's append lock until this transaction ends: no other transaction can
    append (and so commit anything it records) meanwhile."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    else:
        # A write statement makes SQLite take its one write lock now (the driver opens the
        # transaction before it), so no other connection or process can append until this
        # transaction ends; it matches no row, so the append-only trigger never fires.
        conn.execute(text("UPDATE audit_events SET id = id WHERE 0 = 1"))


def chain_values(entries: Sequence[Entry], last_id: int, prev: str,
                 last_at: datetime | None) -> list[dict[str, Any]]:
    """The column values of the rows that continue a chain whose head is (``last_id``,
    ``prev``, ``last_at``): plain dicts, inserted in one statement."""
    # Time never runs backwards along the chain, even if hosts' clocks disagree a little.
    at = utcnow() if last_at is None else max(utcnow(), last_at)
    rows = []
    for event_id, e in enumerate(entries, start=last_id + 1):
        payload = canonical(e.payload)
        digest = event_hash(event_id, at, e.kind.value, e.actor, e.task, e.subject_type,
                            e.subject_id, payload, prev)
        rows.append({"id": event_id, "at": at, "kind": e.kind.value, "actor": e.actor,
                     "task": e.task, "subject_type": e.subject_type,
                     "subject_id": e.subject_id, "payload": payload, "prev_hash": prev,
                     "hash": digest})
        prev = digest
    return rows


def chain(entries: Sequence[Entry], last_id: int, prev: str,
          last_at: datetime | None) -> list[AuditEvent]:
    """``chain_values`` as rows."""
    return [AuditEvent(**values) for values in chain_values(entries, last_id, prev, last_at)]


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    """At commit (in the session's greenlet, so synchronous SQL is allowed): flush the
    domain's own changes, then lock, read the head and insert the events (one statement).
    The lock is thus the transaction's last step and held for three statements."""
    entries: list[Entry] | None = session.info.pop(_PENDING, None)
    if not entries:
        return
    session.flush()
    conn = session.connection()
    hold_append_lock(conn)
    head = conn.execute(select(AuditEvent.id, AuditEvent.hash, AuditEvent.at)
                        .order_by(col(AuditEvent.id).desc()).limit(1)).first()
    last_id, prev, last_at = (0, GENESIS_HASH, None) if head is None else head
    conn.execute(insert(AuditEvent), chain_values(entries, last_id, prev, last_at))


@event.listens_for(Session, "after_transaction_end")
def _drop_staged(session: Session, transaction: SessionTransaction) -> None:
    """Whatever ended the transaction (a rollback, an error), its events end with it."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


@dataclass(frozen=True)
class ChainCheck:
    """The result of recomputing the chain: ``first_broken_event_id`` and ``reason`` name
    the first event that is missing, altered or mislinked; ``head_hash`` is the hash of the
    last event when the chain is whole (write it down elsewhere to detect a later removal
    of the newest events); when broken, the hash of the last good event before the break
    (where a trusted copy of the log may resume), empty when no event is good."""

    ok: bool
    checked: int
    first_broken_event_id: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS_HASH


def find_break(e: AuditEvent, prev_id: int, prev_hash: str) -> tuple[int, str] | None:
    """(id of the broken event, why) when ``e`` does not follow the verified event
    (``prev_id``, ``prev_hash``), else None."""
    if e.id != prev_id + 1:
        return prev_id + 1, (f"event {prev_id + 1} is missing: event {e.id} follows "
                             f"event {prev_id}")
    try:
        json.loads(e.payload)
    except ValueError:
        return e.id, f"event {e.id}: its payload is not JSON (changed after it was written)"
    if hash_of(e) != e.hash:
        return e.id, (f"event {e.id}: its content does not match its hash (changed after it "
                      "was written)")
    if e.prev_hash != prev_hash:
        if prev_id == 0:
            return e.id, f"event {e.id}: its prev_hash is not the start of the chain"
        # e is intact and names another hash of its predecessor: the predecessor was
        # rewritten and given a freshly computed hash.
        return prev_id, (f"event {prev_id}: rewritten with a new hash (event {e.id} holds "
                         "its original hash)")
    return None


async def verify_chain(sessions: async_sessionmaker[AsyncSession],
                       page_rows: int = VERIFY_PAGE_ROWS) -> ChainCheck:
    """Recompute the chain from the first event to the head as it stood when called,
    ``page_rows`` at a time (never the whole log in memory)."""
    async with sessions() as session:
        last = (await session.exec(select(func.max(AuditEvent.id)))).one() or 0
    prev_id, prev_hash, checked = 0, GENESIS_HASH, 0
    last_good: AuditEvent | None = None
    while prev_id < last:
        async with sessions() as session:
            page = list((await session.exec(
                select(AuditEvent).where(col(AuditEvent.id) > prev_id,
                                         col(AuditEvent.id) <= last)
                .order_by(col(AuditEvent.id)).limit(page_rows))).all())
        for e in page:
            found = find_break(e, prev_id, prev_hash)
            if found is not None:
                return _broken(found, checked, last_good)
            prev_id, prev_hash, checked, last_good = e.id, e.hash, checked + 1, e
        if not page:  # rows up to `last` vanished while we read: the tail was removed
            found = (prev_id + 1, f"event {prev_id + 1} is missing: the log ends at {prev_id}")
            return _broken(found, checked, last_good)
    return ChainCheck(True, checked, head_hash=prev_hash)


def _broken(found: tuple[int, str], checked: int, last_good: AuditEvent | None) -> ChainCheck:
    """The check's result at a break, after ``checked`` events of which ``last_good`` was
    the last; a rewritten predecessor is no longer verified, its own predecessor (whose
    hash it links to) is then the head."""
    broken, reason = found
    head = last_good.hash if last_good is not None else ""
    if last_good is not None and broken == last_good.id:
        checked, head = checked - 1, last_good.prev_hash
    return ChainCheck(False, checked, broken, reason, head_hash=head if checked else "")


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
                      page_rows: int = VERIFY_PAGE_ROWS) -> AsyncIterator[AuditEvent]:
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
    """Every event about any of these (subject type, subject id), in chain order."""
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


def verify_lines(lines: Sequence[str]) -> ChainCheck:
    """Re-verify an export: each event's hash, and each link inside the exported range
    (the first event's predecessor is outside the file, so its prev_hash is taken as is)."""
    checked, prev_id, prev_hash = 0, 0, GENESIS_HASH
    last_good: AuditEvent | None = None
    for n, line in enumerate(lines):
        try:
            e = parse_line(line)
        except (ValueError, KeyError, TypeError) as exc:
            return ChainCheck(False, checked, None, f"line {n + 1} is not an exported event: "
                              f"{exc}", last_good.hash if last_good is not None else "")
        if n == 0:
            prev_id, prev_hash = e.id - 1, e.prev_hash
        found = find_break(e, prev_id, prev_hash)
        if found is not None:
            return _broken(found, checked, last_good)
        prev_id, prev_hash, checked, last_good = e.id, e.hash, checked + 1, e
    return ChainCheck(True, checked, head_hash=prev_hash)
