"""Review items: their statuses, and opening one for a prediction routed to review."""

from __future__ import annotations

import uuid
from datetime import timedelta
from enum import StrEnum

from app.db.rows import built
from app.db.tables import Prediction, ReviewItem
from app.ml.task import ReviewPolicy


class ItemStatus(StrEnum):
    """Where a review item stands in the queue."""

    PENDING = "PENDING"
    CLAIMED = "CLAIMED"
    RESOLVED = "RESOLVED"
    ESCALATED = "ESCALATED"


# How strongly each reason suggests the model may be wrong: the queue serves higher first.
REASON_PRIORITY = {
    "MEMBER_FAILURE": 3,
    "OUT_OF_DISTRIBUTION": 3,
    "LOW_CONFIDENCE": 2,
    "MEMBER_DISAGREEMENT": 2,
    "AUDIT_SAMPLE": 0,
}


def open_review_item(policy: ReviewPolicy, p: Prediction) -> ReviewItem:
    """The review item of a prediction routed to REVIEW, under its release's policy."""
    return built(ReviewItem, {
        "id": str(uuid.uuid4()),
        "prediction_id": p.id,
        "task": p.task,
        "release_version": p.release_version,
        "status": ItemStatus.PENDING,
        "priority": sum(REASON_PRIORITY.get(r["code"], 1) for r in p.reasons),
        "due_at": p.created_at + timedelta(hours=policy.sla_hours),
        "created_at": p.created_at,
        "required_reviews": policy.required_reviews,
    })
