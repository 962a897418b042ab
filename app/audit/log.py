"""The audit log: append-only events, each a leaf of an RFC 9162 Merkle tree.

``record`` is called by the domain functions *inside their own transaction*, so an event
commits with the change it records, or neither does. It stages the events on the session;
they are written at commit, as the transaction's last step, with no lock shared by other
writers: each event gets its id (a PostgreSQL sequence; on SQLite, whose one writer holds
the database anyway, the next free ids) and, by a trigger, a row in ``audit_pending``. The
sequencer (``app.audit.sequencer``) later gives pending events consecutive leaves in id
order and extends the tree. Each event commits to the full content of the rows its change left
behind (``app.audit.state``), so ``arbiter audit verify`` finds rows changed behind the
log's back as well as events.
"""

from __future__ import annotations

import hashlib
import json.encoder
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, event, insert, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import merkle
from app.audit.encoding import canonical as canonical  # the log's spelling, re-exported
from app.audit.encoding import stamp as stamp
from app.audit.state import commitments
from app.db.bulk import insert_rows
from app.db.rows import table_of
from app.db.tables import AuditEvent
from app.db.types import utcnow
from app.errors import BadRequestError

# How the canonical encoder (``ensure_ascii=False``) escapes a string, quotes included.
_string = json.encoder.encode_basestring
GENESIS_HASH = "0" * 64  # the prev_hash of the first event of the legacy chain
TEXT_MAX_CHARS = 2_000  # the default bound of free text in a payload (a setting)


class Kind(StrEnum):
    """What an event records."""

    PREDICTION_MADE = "prediction.made"
    INPUT_ERASED = "prediction.input_erased"
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
    BOUND_EXCEEDED = "release.bound_exceeded"
    OUTCOME_RECORDED = "outcome.recorded"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    SEALED = "audit.sealed"  # migration 0011: the legacy hash chain ends here
    PINNED = "audit.legacy_pinned"  # migration 0017: the rows older than the commitments


@dataclass(frozen=True)
class Entry:
    """An event to append: what happened, who did it, to what. ``state`` maps the rows it
    leaves behind (``table/id``) to their commitments; None = computed at commit from the
    subject (``app.audit.state.commitments``)."""

    kind: Kind
    actor: str
    subject_type: str
    subject_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    state: dict[str, str] | None = None


def entry_text(event_id: int, at: datetime, kind: str, actor: str, task: str | None,
               subject_type: str, subject_id: str, payload: str,
               prev_hash: str | None = None) -> str:
    """The leaf entry of an event: the canonical JSON of its fields, ``payload`` being the
    stored canonical JSON text (hashed as that text). A legacy event (before migration
    0011) also has its ``prev_hash``: its entry is the document its chain hash covers."""
    strings = (kind, actor, subject_type, subject_id, payload)
    if type(event_id) is int and all(type(s) is str for s in strings) and (
            task is None or type(task) is str) and prev_hash is None:
        # The same bytes as ``canonical`` of the document below (its keys sorted, each
        # string escaped by the function the encoder itself uses), spelled out: the
        # verifier builds one per event, and this takes a third of the time.
        return (f'{{"actor":{_string(actor)},"at":"{stamp(at)}","id":{event_id},'
                f'"kind":{_string(kind)},"payload":{_string(payload)},'
                f'"subject_id":{_string(subject_id)},"subject_type":{_string(subject_type)},'
                f'"task":{"null" if task is None else _string(task)}}}')
    document = {"id": event_id, "at": stamp(at), "kind": kind, "actor": actor, "task": task,
                "subject_type": subject_type, "subject_id": subject_id, "payload": payload}
    if prev_hash is not None:
        document["prev_hash"] = prev_hash
    return canonical(document)


def entry_of(e: Any) -> bytes:
    """An event's leaf entry, as the bytes its leaf hash covers."""
    return entry_text(e.id, e.at, e.kind, e.actor, e.task, e.subject_type, e.subject_id,
                      e.payload, e.prev_hash).encode()


def legacy_hash(e: AuditEvent) -> str:
    """The chain hash of a legacy event: SHA-256 of its entry (no leaf prefix)."""
    return hashlib.sha256(entry_of(e)).hexdigest()


_EVENTS = table_of(AuditEvent)
_PENDING = "arbiter.audit.pending"  # key of staged entries in a session's ``info``
_TEXT_LIMIT = "arbiter.audit.text_max_chars"  # a sessionmaker's bound of free text


def record(session: AsyncSession, entries: Sequence[Entry]) -> None:
    """Append events in the caller's transaction: they are written as its last step, at
    commit, and vanish with a rollback. Free text longer than the session's bound (the
    ``audit_text_max_chars`` setting) is refused before anything is written."""
    if not session.in_transaction():
        raise RuntimeError("audit events are recorded inside a transaction (session.begin())")
    limit = session.sync_session.info.get(_TEXT_LIMIT, TEXT_MAX_CHARS)
    for e in entries:
        check_text(e.payload, limit)
    session.sync_session.info.setdefault(_PENDING, []).extend(entries)


def check_text(payload: dict[str, Any], limit: int) -> None:
    """BadRequestError naming the field and the bound when a text in ``payload`` is longer
    than ``limit`` characters (a 5 MB comment is not kept for ever)."""
    for name, value in payload.items():
        if isinstance(value, str) and len(value) > limit:
            raise BadRequestError(f"{name} is {len(value)} characters long; the audit log "
                                  f"keeps at most {limit} (ARBITER_AUDIT_TEXT_MAX_CHARS)")


def append(session: AsyncSession, kind: Kind, actor: str, subject_type: str,
           subject_id: str, payload: dict[str, Any] | None = None,
           task: str | None = None) -> None:
    """One event, in the caller's transaction (see ``record``)."""
    record(session, [Entry(kind, actor, subject_type, subject_id, payload or {}, task)])


class IdBlocks:
    """Event ids on PostgreSQL: blocks of ``IDS_PER_BLOCK`` taken from the sequence
    ``audit_events_id_seq`` once and handed out in this process, so a writer spends no
    round trip on them (ids unused at exit are gaps; the tree's leaves have none)."""

    def __init__(self) -> None:
        self._free: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def take(self, conn: Connection, n: int) -> list[int]:
        database = str(conn.engine.url)
        with self._lock:
            free = self._free.setdefault(database, [])
            if len(free) >= n:
                taken, free[:n] = free[:n], []
                return taken
        # Fetched outside the lock: on an async engine the query yields to the event loop
        # (SQLAlchemy's greenlet), and another commit on the same loop that found the lock
        # held would block the loop's thread, so the query could never finish.
        fetched = list(conn.execute(text(
            "SELECT nextval('audit_events_id_seq') FROM generate_series(1, :n)"),
            {"n": max(n, IDS_PER_BLOCK)}).scalars())
        with self._lock:
            free = self._free.setdefault(database, [])
            free += fetched
            taken, free[:n] = free[:n], []
        return taken


IDS_PER_BLOCK = 200
_BLOCKS = IdBlocks()


def new_ids(conn: Connection, n: int) -> list[int]:
    """``n`` fresh event ids. PostgreSQL: from this process's block (no lock, no wait).
    SQLite: after the largest, under the database's one write lock, taken now by a write
    statement that matches no row (so no trigger fires)."""
    if conn.dialect.name == "postgresql":
        return _BLOCKS.take(conn, n)
    conn.execute(text("UPDATE audit_pending SET event_id = event_id WHERE 0 = 1"))
    last = conn.execute(text("SELECT coalesce(max(id), 0) FROM audit_events")).scalar_one()
    return list(range(last + 1, last + 1 + n))


def event_values(entries: Sequence[Entry], ids: Sequence[int],
                 state: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """The column values of the events' rows; ``hash`` is the leaf hash of the entry."""
    at = utcnow()
    rows = []
    for event_id, e, commits in zip(ids, entries, state, strict=True):
        payload = canonical({**e.payload, "state": commits} if commits else e.payload)
        entry = entry_text(event_id, at, e.kind.value, e.actor, e.task, e.subject_type,
                           e.subject_id, payload)
        rows.append({"id": event_id, "at": at, "kind": e.kind.value, "actor": e.actor,
                     "task": e.task, "subject_type": e.subject_type,
                     "subject_id": e.subject_id, "payload": payload, "prev_hash": None,
                     "hash": merkle.leaf_hash(entry.encode()).hex()})
    return rows


# Up to this many events of a commit are written by one INSERT (one round trip: the
# transaction has begun); more by COPY (``app.db.bulk``), which costs three (a statement
# that opens the transaction, COPY, its data) and pays from a few hundred rows on.
INSERT_MAX_EVENTS = 100


def write_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """INSERT the events' rows in ``conn``'s transaction, the cheaper way for their number."""
    if conn.dialect.name == "postgresql" and len(rows) <= INSERT_MAX_EVENTS:
        conn.execute(insert(_EVENTS), rows)
    else:
        insert_rows(conn, _EVENTS, rows)


@event.listens_for(Session, "before_commit")
def _write_staged(session: Session) -> None:
    """At commit (in the session's greenlet, so synchronous SQL is allowed): flush the
    domain's own changes, commit to the rows they left, and insert the events (one
    statement)."""
    entries: list[Entry] | None = session.info.pop(_PENDING, None)
    if not entries:
        return
    session.flush()
    conn = session.connection()
    state = [e.state if e.state is not None else commitments(
        conn, e.subject_type, e.subject_id, e.task, e.kind.value) for e in entries]
    ids = new_ids(conn, len(entries))
    # A trigger marks them pending for the sequencer (migration 0011).
    write_events(conn, event_values(entries, ids, state))


@event.listens_for(Session, "after_transaction_end")
def _drop_staged(session: Session, transaction: SessionTransaction) -> None:
    """Whatever ended the transaction (a rollback, an error), its events end with it."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def bound_text(sessions: async_sessionmaker[AsyncSession], limit: int) -> None:
    """Make the sessions of ``sessions`` refuse free text longer than ``limit``."""
    sessions.configure(info={**sessions.kw.get("info", {}), _TEXT_LIMIT: limit})
