"""Topics and the events published on them: what a subscription to predictions, the review
queue or a task's releases receives.

Every event is a JSON-ready ``dict`` published on a topic (``predictions.<task>``,
``review.<task>``, ``releases.<task>``; build them with the ``*_topic`` helpers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.db.tables import ReviewItem

Event = dict[str, Any]
Message = tuple[str, Event]  # (topic, event)


def predictions_topic(task: str) -> str:
    """Where a task's stored predictions are published."""
    return f"predictions.{task}"


def review_topic(task: str) -> str:
    """Where a task's review-queue changes are published."""
    return f"review.{task}"


def releases_topic(task: str) -> str:
    """Where a task's release events (stages, training, gate, drift) are published."""
    return f"releases.{task}"


class ReleaseEventKind(StrEnum):
    """What a release event tells of."""

    STAGE_CHANGED = "STAGE_CHANGED"
    TRAINING_PROGRESS = "TRAINING_PROGRESS"
    TRAINING_FINISHED = "TRAINING_FINISHED"
    GATE_DECISION = "GATE_DECISION"
    DRIFT_DETECTED = "DRIFT_DETECTED"
    AUTO_ERROR_BOUND_EXCEEDED = "AUTO_ERROR_BOUND_EXCEEDED"


class ReviewChange(StrEnum):
    """What happened to a review item."""

    OPENED = "OPENED"
    CLAIMED = "CLAIMED"
    RELEASED = "RELEASED"
    REVIEWED = "REVIEWED"
    EXPIRED = "EXPIRED"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def release_event(kind: ReleaseEventKind | str, task: str, *, version: int | None = None,
                  from_stage: str | None = None, to_stage: str | None = None,
                  traffic_percent: float | None = None, actor: str | None = None,
                  reason: str | None = None, job_id: str | None = None,
                  status: str | None = None, progress: float | None = None,
                  message: str | None = None, at: datetime | None = None) -> Event:
    """A release event (publish it on ``releases_topic(task)``); ``progress`` is 0..1."""
    kind = ReleaseEventKind(kind)
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be within 0..1, got {progress}")
    return {"kind": kind.value, "task": task, "version": version, "fromStage": from_stage,
            "toStage": to_stage, "trafficPercent": traffic_percent, "actor": actor,
            "reason": reason, "at": (at.isoformat() if at else _now()), "jobId": job_id,
            "status": status, "progress": progress, "message": message}


def prediction_event(values: dict[str, Any]) -> Event:
    """The stored prediction itself, as JSON (subscribers need no database read), from the
    column values it was inserted with (``values_of``): every column but the time already
    holds JSON values, and pydantic's ``model_dump(mode="json")`` cost 11 % of the event
    loop's time at 32 clients (attribute access per column)."""
    return {**values, "created_at": values["created_at"].isoformat()}


def review_event(item: ReviewItem, change: ReviewChange, waiting: int | None = None) -> Event:
    """A review item's new state after ``change``; ``waiting`` = items open in its task."""
    return {"itemId": item.id, "predictionId": item.prediction_id, "task": item.task,
            "change": ReviewChange(change).value, "status": item.status,
            "priority": item.priority, "reviewsDone": item.reviews_done,
            "requiredReviews": item.required_reviews, "finalLabel": item.final_label,
            "waiting": waiting, "at": _now()}


def stored_events(predictions: Sequence[dict[str, Any]], opened: Sequence[ReviewItem],
                  waiting: Mapping[str, int]) -> list[Message]:
    """The events of a commit of stored predictions: one per prediction (given by the
    column values it was inserted with) and per opened review item, with its task's
    ``waiting`` count as of the commit."""
    messages = [(predictions_topic(p["task"]), prediction_event(p)) for p in predictions]
    messages += [(review_topic(i.task), review_event(i, ReviewChange.OPENED, waiting.get(i.task)))
                 for i in opened]
    return messages
