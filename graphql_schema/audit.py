"""The audit log and a prediction's story over GraphQL: thin resolvers handing off to
``app.audit.log`` and ``app.audit.story``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.audit import events as audit
from app.audit.checkpoints import log_key
from app.audit.proofs import Proof, prediction_proof
from app.audit.story import prediction_story
from app.audit.verify import verify_off_loop
from app.db.engine import read
from app.db.pagination import check_page_size
from app.db.tables import AuditEvent as AuditEventRow
from app.db.tables import Review as ReviewRow
from graphql_schema.enums import ReviewKind
from graphql_schema.permissions import GUARDED, Info
from graphql_schema.predictions import LabelUse, Prediction, label_uses
from graphql_schema.relay import Connection
from graphql_schema.releases import Release
from graphql_schema.review import ReviewItem


@strawberry.type(description="One entry of the append-only audit log, a leaf of its Merkle "
                 "tree.")
class AuditEvent:
    id: strawberry.ID = strawberry.field(
        description="The event's id, as text (its place in the tree is its leaf index, in its "
        "proof).")
    sequence: int = strawberry.field(description="The event's id as a number: unique and "
                                     "increasing, as its entry (and so its hash) records it.")
    at: datetime
    kind: str = strawberry.field(description="What happened, e.g. prediction.made, "
                                 "review.submitted, release.stage_changed, key.revoked.")
    actor: str = strawberry.field(description="The API key (key:<id>:<name>), "
                                  "cli:<user>, or system:<job>.")
    task: str | None
    subject_type: str = strawberry.field(description="prediction, review_item, release, "
                                         "training_job or api_key.")
    subject_id: str
    payload: JSON = strawberry.field(description="The details, as hashed.")
    payload_json: str = strawberry.field(
        description="The payload exactly as hashed: its canonical JSON text (numbers keep "
        "their spelling, e.g. 1.0, which a JSON value cannot promise), for exports that must "
        "re-verify.")
    prev_hash: str | None = strawberry.field(
        description="Events before the log became a tree (migration 0011): the hash of the "
        "event before it; null for later events.")
    hash: str = strawberry.field(description="Its leaf hash, SHA-256(0x00 || entry) (legacy "
                                 "events: the chain hash of its fields and prevHash).")

    @classmethod
    def from_row(cls, e: AuditEventRow) -> AuditEvent:
        return cls(id=strawberry.ID(str(e.id)), sequence=e.id, at=e.at, kind=e.kind,
                   actor=e.actor, task=e.task,
                   subject_type=e.subject_type, subject_id=e.subject_id,
                   payload=cast(JSON, json.loads(e.payload)), payload_json=e.payload,
                   prev_hash=e.prev_hash,
                   hash=e.hash)


@strawberry.type(description="A page of audit events, in chain (oldest first) order.")
class AuditEventConnection(Connection[AuditEvent]):
    pass


@strawberry.type(description="The audit log recomputed: events against leaves, the tree "
                 "against every signed checkpoint, the state tables against the events' "
                 "commitments.")
class AuditVerification:
    ok: bool
    checked: int = strawberry.field(description="Events recomputed: in the tree, and "
                                    "waiting for the sequencer.")
    first_broken_event_id: strawberry.ID | None = strawberry.field(
        description="The first event named by a problem (missing, changed, ...).")
    reason: str | None = strawberry.field(description="The first problem.")
    problems: list[str] = strawberry.field(
        description="Every problem found (the first 200): events, checkpoints, rows changed, "
        "deleted or added behind the log's back.")
    head_hash: str = strawberry.field(
        description="The root hash of the tree recomputed from the events.")
    checkpoints: int = strawberry.field(description="Signed checkpoints verified.")


@strawberry.type(description="A signed tree head: the log had treeSize leaves with rootHash, "
                 "signed (Ed25519) by key keyId. The signed message is documented in "
                 "docs/audit.md.")
class AuditCheckpoint:
    tree_size: int
    root_hash: str
    at: datetime
    signature: str = strawberry.field(description="Ed25519 signature, hex.")
    key_id: str = strawberry.field(description="First 16 hex digits of SHA-256 of the raw "
                                   "public key.")


@strawberry.type(description="RFC 9162 inclusion proof of a prediction's prediction.made "
                 "event in the tree a checkpoint signed; hashes in hex.")
class AuditProof:
    leaf_index: int
    leaf_hash: str = strawberry.field(description="SHA-256(0x00 || entry).")
    tree_size: int
    audit_path: list[str] = strawberry.field(description="Sibling hashes, leaf to root.")
    root_hash: str
    entry: str = strawberry.field(description="The leaf entry: the event's canonical JSON.")
    checkpoint: AuditCheckpoint

    @classmethod
    def of(cls, p: Proof) -> AuditProof:
        c = p.checkpoint
        return cls(leaf_index=p.leaf_index, leaf_hash=p.leaf_hash, tree_size=p.tree_size,
                   audit_path=p.audit_path, root_hash=p.root_hash, entry=p.entry,
                   checkpoint=AuditCheckpoint(tree_size=c.tree_size, root_hash=c.root_hash,
                                              at=c.at, signature=c.signature, key_id=c.key_id))


@strawberry.type(description="One person's review of a prediction.")
class ReviewRecord:
    reviewer: str
    label: str
    comment: str
    review_kind: ReviewKind = strawberry.field(
        description="REVIEW, or ADJUDICATION (decided a disagreement).")
    kind: str = strawberry.field(
        description="review, or adjudication (decided a disagreement).",
        deprecation_reason="Use reviewKind (the ReviewKind enum); this lowercase text goes "
        "in the next release.")
    at: datetime

    @classmethod
    def from_row(cls, r: ReviewRow) -> ReviewRecord:
        kind = ReviewKind.ADJUDICATION if r.adjudication else ReviewKind.REVIEW
        return cls(reviewer=r.reviewer_name, label=r.label, comment=r.comment,
                   review_kind=kind, kind=kind.value, at=r.created_at)


@strawberry.type(description="Everything about one prediction, for an audit: the input, "
                 "the release and members that answered, the explanation, route and reasons "
                 "(on `prediction`), each review, the final label, the releases later "
                 "trained on it, and its audit events.")
class PredictionStory:
    prediction: Prediction
    release: Release
    review_item: ReviewItem | None
    reviews: list[ReviewRecord]
    final_label: str | None
    audit_events: list[AuditEvent]

    @strawberry.field(description="Releases that later trained or calibrated on its label.")
    async def trained_into(self, info: Info) -> list[LabelUse]:
        return await label_uses(info, str(self.prediction.id))

    @strawberry.field(description="Proof that its prediction.made event is in the log a "
                      "signed checkpoint covers; null until a checkpoint covers it (seconds).")
    async def audit_proof(self, info: Info) -> AuditProof | None:
        proof = await read(info.context.services.sessions, prediction_proof,
                           str(self.prediction.id))
        return AuditProof.of(proof) if proof is not None else None


def _event_id(number: int | None) -> strawberry.ID | None:
    return strawberry.ID(str(number)) if number is not None else None


@strawberry.type
class AuditQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="Recompute the audit log and name what does not hold (off the "
                      "server's event loop, one at a time per server; a log too long to verify "
                      "within the query deadline is verified with `arbiter audit verify`).")
    async def verify_audit_log(self, info: Info) -> AuditVerification:
        services = info.context.services
        s = services.settings
        key = log_key(s.audit_signing_key, s.data_dir, s.production).public
        v = await verify_off_loop(s.resolved_database_url, key)
        return AuditVerification(ok=v.ok, checked=v.leaves + v.pending,
                                 first_broken_event_id=_event_id(v.first_broken_event_id),
                                 reason=v.problems[0] if v.problems else None,
                                 problems=v.problems, head_hash=v.root_hash,
                                 checkpoints=v.checkpoints)

    @strawberry.field(permission_classes=GUARDED,
                      description="Audit events in [since, until) of a kind and task, "
                      "oldest first.")
    async def audit_events(self, info: Info, since: datetime | None = None,
                           until: datetime | None = None, kind: str | None = None,
                           task: str | None = None, first: int = 50,
                           after: str | None = None) -> AuditEventConnection:
        services = info.context.services
        check_page_size(first, services.settings.page_size_max)
        page = await read(services.sessions, audit.list_events, since=since, until=until,
                          kind=kind, task=task, first=first, after=after)
        return AuditEventConnection.of(page, after, AuditEvent.from_row)

    @strawberry.field(permission_classes=GUARDED,
                      description="A prediction's whole story in one query.")
    async def prediction_story(self, info: Info, id: strawberry.ID) -> PredictionStory:
        s = await read(info.context.services.sessions, prediction_story, id)
        return PredictionStory(
            prediction=Prediction.from_row(s.prediction), release=Release.from_row(s.release),
            review_item=ReviewItem.from_row(s.item) if s.item is not None else None,
            reviews=[ReviewRecord.from_row(r) for r in s.reviews],
            final_label=s.prediction.final_label,
            audit_events=[AuditEvent.from_row(e) for e in s.events])
