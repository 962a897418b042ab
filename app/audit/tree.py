"""The stored Merkle tree: its size, the hashes of its perfect subtrees, proofs read from
them, and its growth by a batch of leaves (the sequencer's step)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, func, insert, select, tuple_

from app.audit import merkle
from app.db.audit_tree import AuditCheckpoint, AuditLeaf, AuditNode, AuditPending
from app.db.types import utcnow

LEAVES = AuditLeaf.__table__  # type: ignore[attr-defined]
NODES = AuditNode.__table__  # type: ignore[attr-defined]
CHECKPOINTS = AuditCheckpoint.__table__  # type: ignore[attr-defined]
PENDING_TABLE = AuditPending.__table__  # type: ignore[attr-defined]
# Leaves follow commits where it matters: an event inserted after another transaction's
# commit that changed the same row (it waited for that row's lock) has a later queued_at
# (PostgreSQL's clock at insert; ids come from per-process blocks there, in any order). On
# SQLite queued_at is empty and ids follow commits (numbered under the one write lock).
COMMIT_ORDER = (PENDING_TABLE.c.queued_at.asc().nulls_first(), PENDING_TABLE.c.event_id)


def tree_size(conn: Connection) -> int:
    last = conn.execute(select(func.max(LEAVES.c.leaf_index))).scalar()
    return 0 if last is None else int(last) + 1


def fetch_nodes(conn: Connection, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
    """The stored hashes of these perfect subtrees (level 0: leaves), in two queries per
    500 nodes."""
    leaves = sorted(idx for level, idx in wanted if level == 0)
    inner = sorted((level, idx) for level, idx in wanted if level > 0)
    found: dict[merkle.Node, bytes] = {}
    for i in range(0, len(leaves), 500):
        rows = conn.execute(select(LEAVES.c.leaf_index, LEAVES.c.leaf_hash)
                            .where(LEAVES.c.leaf_index.in_(leaves[i:i + 500])))
        found.update({(0, int(idx)): bytes.fromhex(h) for idx, h in rows})
    for i in range(0, len(inner), 500):
        rows = conn.execute(select(NODES.c.level, NODES.c.idx, NODES.c.hash).where(
            tuple_(NODES.c.level, NODES.c.idx).in_(inner[i:i + 500])))
        found.update({(int(level), int(idx)): bytes.fromhex(h) for level, idx, h in rows})
    return found


def lookup(conn: Connection, ranges: Sequence[tuple[int, int]]) -> dict[merkle.Node, bytes]:
    """The stored nodes a proof of these ranges needs; a missing one is a broken tree."""
    wanted = merkle.proof_nodes(ranges)
    found = fetch_nodes(conn, wanted)
    missing = wanted - found.keys()
    if missing:
        raise merkle.ProofError(f"the stored tree lacks nodes {sorted(missing)[:5]}")
    return found


def inclusion(conn: Connection, index: int, size: int) -> list[bytes]:
    ranges = merkle.inclusion_ranges(index, size)
    return merkle.prove(ranges, lookup(conn, ranges).__getitem__)


def consistency(conn: Connection, old: int, size: int) -> list[bytes]:
    ranges = merkle.consistency_ranges(old, size)
    return merkle.prove(ranges, lookup(conn, ranges).__getitem__)


def frontier(conn: Connection, size: int) -> merkle.Frontier:
    """The right edge of the stored tree of ``size`` leaves."""
    nodes = merkle.range_nodes(0, size)
    found = fetch_nodes(conn, nodes)
    if len(found) != len(nodes):
        raise merkle.ProofError(f"the stored tree of {size} leaves lacks its right edge")
    return merkle.Frontier(size, [found[n] for n in nodes])


def grow(conn: Connection, edge: merkle.Frontier,
         leaves: Sequence[tuple[int, bytes]]) -> None:
    """Append (event id, leaf hash) in order as the next leaves, with the perfect subtrees
    they complete."""
    leaf_rows, node_rows = [], []
    now = utcnow()
    for event_id, h in leaves:
        leaf_rows.append({"leaf_index": edge.size, "event_id": event_id, "leaf_hash": h.hex(),
                          "sequenced_at": now})
        node_rows += [{"level": lv, "idx": i, "hash": n.hex()} for (lv, i), n in edge.append(h)]
    conn.execute(insert(AuditLeaf), leaf_rows)
    if node_rows:
        conn.execute(insert(AuditNode), node_rows)


def checkpoints(conn: Connection) -> list[AuditCheckpoint]:
    """Every kept checkpoint, smallest tree first."""
    rows = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size,
                                                     CHECKPOINTS.c.id))
    return [AuditCheckpoint(**r._mapping) for r in rows]


def latest_checkpoint(conn: Connection) -> AuditCheckpoint | None:
    row = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size.desc(),
                                                    CHECKPOINTS.c.id.desc()).limit(1)).first()
    return None if row is None else AuditCheckpoint(**row._mapping)

