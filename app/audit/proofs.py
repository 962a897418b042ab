"""Proofs for auditors: that a prediction's event is leaf N of the tree whose root a
checkpoint signed (an RFC 9162 inclusion proof), and checking such a proof with nothing
but the entry, the path and the log's public key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import merkle, tree
from app.audit.checkpoints import as_json, from_json, signature_problem
from app.audit.log import Kind, entry_of
from app.db.audit_tree import AuditCheckpoint
from app.db.tables import AuditEvent
from app.errors import NotFoundError

EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Proof:
    """Leaf ``leaf_index`` (hash ``leaf_hash``, of ``entry``) is in the tree of
    ``tree_size`` leaves with root ``root_hash``, which ``checkpoint`` signed."""

    leaf_index: int
    leaf_hash: str
    tree_size: int
    audit_path: list[str]
    root_hash: str
    entry: str
    checkpoint: AuditCheckpoint

    def as_json(self) -> dict[str, Any]:
        return {"leafIndex": self.leaf_index, "leafHash": self.leaf_hash,
                "treeSize": self.tree_size, "auditPath": self.audit_path,
                "rootHash": self.root_hash, "entry": self.entry,
                "checkpoint": as_json(self.checkpoint)}


async def prediction_proof(session: AsyncSession, prediction_id: str) -> Proof | None:
    """The proof of a prediction's ``prediction.made`` event against the newest
    checkpoint; None while the event waits for a leaf or for a checkpoint covering it."""
    conn = await session.connection()
    return await conn.run_sync(_prove, prediction_id)


def _prove(conn: Connection, prediction_id: str) -> Proof | None:
    event = conn.execute(select(EVENTS).where(
        EVENTS.c.subject_type == "prediction", EVENTS.c.subject_id == prediction_id,
        EVENTS.c.kind == Kind.PREDICTION_MADE.value)).first()
    if event is None:
        raise NotFoundError(f"no audit event of prediction {prediction_id!r}")
    leaf = conn.execute(select(tree.LEAVES).where(tree.LEAVES.c.event_id == event.id)).first()
    checkpoint = tree.latest_checkpoint(conn)
    if leaf is None or checkpoint is None or checkpoint.tree_size <= leaf.leaf_index:
        return None
    path = tree.inclusion(conn, leaf.leaf_index, checkpoint.tree_size)
    return Proof(leaf.leaf_index, leaf.leaf_hash, checkpoint.tree_size,
                 [p.hex() for p in path], checkpoint.root_hash, entry_of(event).decode(),
                 checkpoint)


def proof_problem(proof: dict[str, Any], key: Ed25519PublicKey) -> str | None:
    """Why a proof (``Proof.as_json``) does not hold for the log's key, or None."""
    try:
        entry = str(proof["entry"]).encode()
        leaf = merkle.leaf_hash(entry)
        if leaf.hex() != proof["leafHash"]:
            return "the entry does not hash to leafHash"
        root = merkle.root_from_inclusion(int(proof["leafIndex"]), int(proof["treeSize"]),
                                          leaf, [bytes.fromhex(p) for p in proof["auditPath"]])
        checkpoint = from_json(proof["checkpoint"])
    except merkle.ProofError as exc:
        return str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        return f"not a proof (leafIndex, leafHash, treeSize, auditPath, rootHash, entry, " \
               f"checkpoint): {exc}"
    if root.hex() != proof["rootHash"] or root.hex() != checkpoint.root_hash:
        return "the audit path does not lead to the signed root"
    if checkpoint.tree_size != int(proof["treeSize"]):
        return "the checkpoint signed another tree size"
    return signature_problem(checkpoint, key)
