"""``arbiter audit verify``: recompute the log from its events and hold it against what was
signed and against the state.

1. Every leaf, in order, is recomputed from its event (a missing or changed event is
   named); legacy events (before migration 0011) must also keep their hash chain.
2. The tree recomputed from the events must have, at each kept checkpoint's size (and at
   each size a witness kept, ``--checkpoints``), the root that was signed; each signature
   must verify with the log's public key; a consistency proof from the stored tree must
   lead from each checkpoint to the current root. Rewritten history, truncation and a
   checkpoint signed with another key all fail here.
3. Every event must be in the tree or waiting for the sequencer.
4. Every row of the committed tables must be what the last event about it committed to
   (``app.audit.state``): rows changed, deleted or added behind the log's back are named.
   A row no event commits to is legacy only when migration 0017's ``audit.legacy_pinned``
   events name it (the rows older than the commitments, by id): a row dated in the past
   is not thereby legacy. A prediction's input without its salt must have been erased by an
   ``prediction.input_erased`` event, and be empty.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import JSON, Connection, Text, cast, exists, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app import json_codec
from app.audit import merkle, state, tree
from app.audit.checkpoints import signature_problem
from app.audit.encoding import stamp
from app.audit.log import GENESIS_HASH, Kind, entry_of, legacy_hash
from app.db.audit_tree import AuditCheckpoint
from app.db.engine import make_engine, make_sessionmaker, snapshot
from app.db.tables import AuditEvent

PAGE_ROWS = 5_000
MAX_PROBLEMS = 200  # named in full; beyond, only counted
EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
_INPUT_COMMITMENT = state.FIELDS["predictions"].index("input_commitment")


@dataclass
class Verification:
    """What ``verify`` found: ``problems`` (the first ``MAX_PROBLEMS``) name each event,
    checkpoint or row that does not hold; ``problem_count`` counts them all."""

    leaves: int = 0
    root_hash: str = merkle.EMPTY_ROOT.hex()
    checkpoints: int = 0
    rows: int = 0
    legacy_rows: int = 0
    pending: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    first_broken_event_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, text: str, event_id: int | None = None) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        if event_id is not None and self.first_broken_event_id is None:
            self.first_broken_event_id = event_id


@dataclass
class _Walk:
    """What the walk over the leaves carries from one leaf to the next."""

    edge: merkle.Frontier = field(default_factory=merkle.Frontier)
    wanted: set[int] = field(default_factory=set)  # tree sizes whose root is needed
    roots: dict[int, bytes] = field(default_factory=dict)
    latest: dict[str, tuple[str, int]] = field(default_factory=dict)  # row -> (digest, event)
    legacy_head: str = GENESIS_HASH
    legacy_count: int = 0
    pinned: set[str] = field(default_factory=set)  # rows older than the commitments
    erased: set[str] = field(default_factory=set)  # predictions whose input was erased


async def verify_log(sessions: async_sessionmaker[AsyncSession], key: Ed25519PublicKey,
                     witness: Sequence[AuditCheckpoint] = ()) -> Verification:
    """Verify the log in one snapshot of the database (the sequencer moves events from
    waiting to the tree meanwhile)."""
    async with sessions() as session:
        conn = await session.connection()
        await snapshot(conn)
        return await conn.run_sync(_verify, key, list(witness))


# One verification at a time per process: one a query's deadline abandoned runs to its end
# in its thread, and the next waits for it rather than pile up beside it.
_ONE_AT_A_TIME = threading.Lock()


async def verify_off_loop(url: str, key: Ed25519PublicKey) -> Verification:
    """``verify_log`` in a worker thread, on an engine and event loop of its own: hashing
    the whole log takes seconds per 10,000 events, and on the server's loop it stalled every
    other request for as long (in the thread it takes the GIL in short slices)."""
    def run() -> Verification:
        async def fresh() -> Verification:
            engine = make_engine(url, pooled=False)
            try:
                return await verify_log(make_sessionmaker(engine), key)
            finally:
                await engine.dispose()
        with _ONE_AT_A_TIME:
            return asyncio.run(fresh())
    return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)


def _verify(conn: Connection, key: Ed25519PublicKey,
            witness: list[AuditCheckpoint]) -> Verification:
    result = Verification()
    kept = tree.checkpoints(conn)
    walk = _Walk(wanted={c.tree_size for c in [*kept, *witness]})
    for row in _stream(conn, _leaf_query()):
        _check_leaf(row, walk, result)
    result.leaves, result.root_hash = walk.edge.size, walk.edge.root().hex()
    for row in _pending(conn):
        result.pending += 1
        if row.prev_hash is None and merkle.leaf_hash(entry_of(row)).hex() != row.hash:
            result.add(f"event {row.id} (waiting for a leaf): its content does not match its "
                       "leaf hash (changed after it was written)", row.id)
        _commit(row, walk)
    for c in kept + witness:
        _check_checkpoint(conn, c, key, walk, result)
    pending = tree.PENDING_TABLE
    for (event_id,) in conn.execute(select(pending.c.event_id).where(
            ~exists().where(EVENTS.c.id == pending.c.event_id)).limit(MAX_PROBLEMS)):
        result.add(f"event {event_id} is missing: deleted behind the log's back while it "
                   "waited for a leaf", event_id)
    for (event_id,) in conn.execute(_stray_query()):
        result.add(f"event {event_id} is in no leaf and not waiting for one (inserted "
                   "behind the log's back)", event_id)
    _check_state(conn, walk, result)
    return result


def _leaf_query() -> Any:
    leaves = tree.LEAVES
    return (select(leaves.c.leaf_index, leaves.c.leaf_hash, leaves.c.event_id, EVENTS)
            .select_from(leaves.outerjoin(EVENTS, EVENTS.c.id == leaves.c.event_id))
            .order_by(leaves.c.leaf_index))


def _pending(conn: Connection) -> Iterator[Any]:
    """The events waiting for a leaf, in the order the sequencer will give them leaves (so
    the last to commit to a row is the one held against it); a missing one is named
    elsewhere."""
    order = list(conn.execute(select(tree.PENDING_TABLE.c.event_id)
                              .order_by(*tree.COMMIT_ORDER)).scalars())
    for start in range(0, len(order), PAGE_ROWS):
        chunk = order[start:start + PAGE_ROWS]
        rows = {r.id: r for r in conn.execute(select(EVENTS).where(EVENTS.c.id.in_(chunk)))}
        yield from (rows[i] for i in chunk if i in rows)


def _stray_query() -> Any:
    pending, leaves = tree.PENDING_TABLE, tree.LEAVES
    return (select(EVENTS.c.id)
            .where(~exists().where(leaves.c.event_id == EVENTS.c.id),
                   ~exists().where(pending.c.event_id == EVENTS.c.id))
            .order_by(EVENTS.c.id).limit(MAX_PROBLEMS))


def _stream(conn: Connection, query: Any) -> Iterator[Any]:
    """The query's rows through one cursor, fetched a page at a time. (A query per page,
    ``> last ORDER BY .. LIMIT``, had PostgreSQL scan and sort the rest of the table for
    each page: quadratic in the log's length.)"""
    result = conn.execution_options(yield_per=PAGE_ROWS).execute(query)
    for page in result.partitions():
        yield from page


def _check_leaf(row: Any, walk: _Walk, result: Verification) -> None:
    index = row.leaf_index
    if index != walk.edge.size:
        result.add(f"leaves {walk.edge.size} to {index - 1} are missing from the tree")
    recomputed = None
    if row.id is None:
        result.add(f"event {row.event_id} (leaf {index}) is missing: deleted behind the "
                   "log's back", row.event_id)
    else:
        recomputed = merkle.leaf_hash(entry_of(row))
        if recomputed.hex() != row.leaf_hash:
            result.add(f"event {row.id} (leaf {index}): its content does not match its "
                       "leaf hash (changed after it was written)", row.id)
        _check_legacy(row, walk, result)
        _commit(row, walk)
    # The tree is recomputed from the events themselves, never from stored hashes.
    walk.edge.append(recomputed if recomputed is not None else bytes.fromhex(row.leaf_hash))
    if walk.edge.size in walk.wanted:
        walk.roots[walk.edge.size] = walk.edge.root()


def _check_legacy(row: Any, walk: _Walk, result: Verification) -> None:
    if row.kind == Kind.SEALED:
        sealed = json.loads(row.payload)
        if (sealed.get("legacyEvents"), sealed.get("legacyHead") or GENESIS_HASH) != (
                walk.legacy_count, walk.legacy_head):
            result.add(f"event {row.id}: the sealed legacy chain had {sealed.get('legacyEvents')}"
                       f" events ending in {sealed.get('legacyHead')}; the log holds "
                       f"{walk.legacy_count} ending in {walk.legacy_head}", row.id)
    if row.prev_hash is None:
        return
    if legacy_hash(row) != row.hash or row.prev_hash != walk.legacy_head:
        result.add(f"event {row.id}: the legacy hash chain breaks here", row.id)
    walk.legacy_head, walk.legacy_count = row.hash, walk.legacy_count + 1


def _commit(row: Any, walk: _Walk) -> None:
    """Note the rows an event commits to (a later event about a row replaces it), the
    legacy rows it pins and the input it erases."""
    if row.kind == Kind.PINNED:
        walk.pinned.update(json_codec.loads(row.payload).get("rows", []))
    elif row.kind == Kind.INPUT_ERASED:
        walk.erased.add(f"predictions/{row.subject_id}")
    if '"state":' not in row.payload:
        return
    event_id = row.id
    latest = walk.latest
    for k, digest in json_codec.loads(row.payload).get("state", {}).items():
        latest[k] = (digest, event_id)


def _check_checkpoint(conn: Connection, c: AuditCheckpoint, key: Ed25519PublicKey,
                      walk: _Walk, result: Verification) -> None:
    signed = f"the checkpoint of {c.tree_size} leaves signed at {stamp(c.at)}"
    problem = signature_problem(c, key)
    if problem is not None:
        result.add(problem)
    elif c.tree_size > walk.edge.size:
        result.add(f"{signed}: the log has only {walk.edge.size} leaves (truncated)")
    elif c.tree_size and walk.roots.get(c.tree_size) != bytes.fromhex(c.root_hash):
        result.add(f"{signed}: its first {c.tree_size} events no longer hash to the signed "
                   "root (history rewritten)")
    else:
        try:
            proof = tree.consistency(conn, c.tree_size, walk.edge.size)
            merkle.check_consistency(c.tree_size, walk.edge.size, bytes.fromhex(c.root_hash),
                                     walk.edge.root(), proof)
            result.checkpoints += 1
        except merkle.ProofError as exc:
            result.add(f"{signed}: no consistency proof to the current tree ({exc})")


def _check_state(conn: Connection, walk: _Walk, result: Verification) -> None:
    for table in state.FIELDS:
        query, parsed = _state_query(table)
        width = len(state.FIELDS[table])
        found = []  # rows are read in the table's own order (no sort); named in id order
        for row in _stream(conn, query):
            values = list(row)
            for i in parsed:
                if values[i] is not None:
                    values[i] = json_codec.loads(values[i])
            problem = _check_row(table, values, width, walk, result)
            if problem is not None:
                found.append((values[0], *problem))
        for _, text, event_id in sorted(found, key=lambda p: p[0]):
            result.add(text, event_id)
    for k, (_, event_id) in walk.latest.items():
        result.add(f"{k} was deleted behind the log's back (event {event_id} committed to "
                   "it)", event_id)


def _state_query(table: str) -> tuple[Any, list[int]]:
    """The committed columns of ``table`` (``id`` first; a prediction's input and salt
    after them), and the places of the JSON ones: those are read as their stored text and
    parsed here, once, rather than by the driver's codec and SQLAlchemy's processor per
    value (a fifth of the time spent on a prediction's row)."""
    t = state.table_of(table)
    columns = [t.c[f] for f in state.FIELDS[table]]
    if table == "predictions":
        columns += [t.c.input, t.c.input_salt]
    parsed = [i for i, c in enumerate(columns) if isinstance(c.type, JSON)]
    return select(*[cast(c, Text).label(c.name) if isinstance(c.type, JSON) else c
                    for c in columns]), parsed


def _check_row(table: str, values: list[Any], width: int, walk: _Walk,
               result: Verification) -> tuple[str, int | None] | None:
    """What is wrong with a row (and the event that committed to it), or None (it is
    counted). ``values``: its committed columns in ``state.FIELDS`` order (a prediction's
    input and salt after them)."""
    k = f"{table}/{values[0]}"
    committed = walk.latest.pop(k, None)
    if committed is None:
        if k in walk.pinned:
            result.legacy_rows += 1
            return None
        return f"{k} was added behind the log's back (no event commits to it)", None
    problem = (f"was changed behind the log's back (event {committed[1]} committed to other "
               "content)" if state.digest_of(table, values[:width]) != committed[0]
               else _input_problem(values, width, k in walk.erased)
               if table == "predictions" else None)
    if problem is None:
        result.rows += 1
        return None
    return f"{k} {problem}", committed[1]


def _input_problem(values: list[Any], width: int, erased: bool) -> str | None:
    """What is wrong with a committed prediction's stored input: it must match its salted
    commitment; without a salt it must have been erased (audited) and be empty. (A
    prediction older than salted commitments has neither, and its commitment says so.)"""
    commitment = values[_INPUT_COMMITMENT]
    stored_input, salt = values[width], values[width + 1]
    if commitment is None:
        return None
    if salt is None:
        if not erased:
            return ("has lost its input's salt behind the log's back (no "
                    "prediction.input_erased event erased it)")
        if stored_input:
            return "has an input again behind the log's back (it was erased)"
        return None
    if state.input_commitment(salt, stored_input) != commitment:
        return ("has a stored input changed behind the log's back (it no longer matches its "
                "salted commitment)")
    return None
