"""The tables of the audit log's Merkle tree (see ``app.audit.sequencer``): which event
sits at which leaf, the hashes of the tree's perfect subtrees, the signed checkpoints, and
the events committed but not yet given a leaf."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, SmallInteger
from sqlmodel import Field, SQLModel

from app.db.types import UTCDateTime


class AuditLeaf(SQLModel, table=True):
    """Leaf ``leaf_index`` of the tree is event ``event_id``, whose entry hashes to
    ``leaf_hash`` (RFC 9162: SHA-256(0x00 || entry), hex)."""

    __tablename__ = "audit_leaves"
    leaf_index: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: int = Field(sa_column=Column(Integer, nullable=False, unique=True))
    leaf_hash: str = Field(max_length=64)
    sequenced_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class AuditNode(SQLModel, table=True):
    """The hash of the perfect subtree of leaves [idx * 2^level, (idx + 1) * 2^level),
    level >= 1 (leaves are in ``audit_leaves``): proofs are made of these."""

    __tablename__ = "audit_nodes"
    level: int = Field(sa_column=Column(SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: str = Field(max_length=64)


class AuditCheckpoint(SQLModel, table=True):
    """A signed tree head: the tree had ``tree_size`` leaves and root ``root_hash`` at
    ``at``, signed (Ed25519, hex) by the key whose id is ``key_id``."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_size", "tree_size"),)
    id: int | None = Field(default=None, primary_key=True)
    tree_size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root_hash: str = Field(max_length=64)
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    signature: str = Field(max_length=128)
    key_id: str = Field(max_length=16)


class AuditPending(SQLModel, table=True):
    """An event committed with its change and waiting for the sequencer to give it a leaf."""

    __tablename__ = "audit_pending"
    event_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    # PostgreSQL: the database clock at insert, after every row lock the event's transaction
    # took; leaves follow it (migration 0018). SQLite: empty (ids follow commits there).
    queued_at: datetime | None = Field(default=None,
                                       sa_column=Column(DateTime(timezone=True), nullable=True))
