"""The audit log and a prediction's story over GraphQL: thin resolvers handing off to
``app.audit.log`` and ``app.audit.story``."""

from __future__ import annotations

import json
from datetime import datetime
from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.audit import log as audit
from app.audit.story import prediction_story
from app.db.engine import read
from app.db.pagination import check_page_size
from app.db.tables import AuditEvent as AuditEventRow
from app.db.tables import Review as ReviewRow
from graphql_schema.context import Info
from graphql_schema.permissions import GUARDED
from graphql_schema.predictions import LabelUse, Prediction, label_uses
from graphql_schema.relay import Connection
from graphql_schema.releases import Release
from graphql_schema.review import ReviewItem


@strawberry.type(description="One entry of the hash-chained, append-only audit log.")
class AuditEvent:
    id: int = strawberry.field(description="Position in the chain: 1, 2, 3, ... without gaps.")
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
    prev_hash: str = strawberry.field(description="The hash of the event before it.")
    hash: str = strawberry.field(description="SHA-256 of the canonical JSON of its fields "
                                 "and prevHash.")

    @classmethod
    def from_row(cls, e: AuditEventRow) -> AuditEvent:
        return cls(id=e.id, at=e.at, kind=e.kind, actor=e.actor, task=e.task,
                   subject_type=e.subject_type, subject_id=e.subject_id,
                   payload=cast(JSON, json.loads(e.payload)), payload_json=e.payload,
                   prev_hash=e.prev_hash,
                   hash=e.hash)


@strawberry.type(description="A page of audit events, in chain (oldest first) order.")
class AuditEventConnection(Connection[AuditEvent]):
    pass


@strawberry.type(description="The audit chain recomputed from its first event.")
class AuditVerification:
    ok: bool
    checked: int = strawberry.field(description="Events verified before the first break.")
    first_broken_event_id: int | None = strawberry.field(
        description="The first event missing, changed or linked to the wrong predecessor.")
    reason: str | None
    head_hash: str = strawberry.field(
        description="Hash of the newest event when ok: keep it elsewhere to detect a later "
        "removal of the newest events. When broken, the hash of the last good event (the one "
        "before firstBrokenEventId); empty only when no event is good.")


@strawberry.type(description="One person's review of a prediction.")
class ReviewRecord:
    reviewer: str
    label: str
    comment: str
    kind: str = strawberry.field(description="review, or adjudication (decided a "
                                 "disagreement).")
    at: datetime

    @classmethod
    def from_row(cls, r: ReviewRow) -> ReviewRecord:
        return cls(reviewer=r.reviewer_name, label=r.label, comment=r.comment,
                   kind="adjudication" if r.adjudication else "review", at=r.created_at)


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


@strawberry.type
class AuditQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="Recompute the audit chain and name its first broken link.")
    async def verify_audit_log(self, info: Info) -> AuditVerification:
        c = await audit.verify_chain(info.context.services.sessions)
        return AuditVerification(ok=c.ok, checked=c.checked,
                                 first_broken_event_id=c.first_broken_event_id,
                                 reason=c.reason, head_hash=c.head_hash)

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
