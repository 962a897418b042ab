"""The database tables (SQLModel). Alembic migrations in ``migrations/`` create them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from app.db.types import JSONType, UTCDateTime, utcnow


def _json(nullable: bool = False) -> Any:
    return Field(sa_column=Column(JSONType, nullable=nullable))


def _time(nullable: bool = False) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=nullable))


class ApiKey(SQLModel, table=True):
    """An API key, stored as its SHA-256 (keys are random, 256-bit: a slow hash adds nothing)."""

    __tablename__ = "api_keys"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str
    key_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = _time()
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class Release(SQLModel, table=True):
    """A numbered, immutable ensemble of members for one task, with its stage."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("task", "version", name="uq_releases_task_version"),
        Index("ix_releases_task_stage", "task", "stage"),
        # At most one LIVE release per task, even when two trainings finish at once.
        Index(
            "uq_releases_one_live",
            "task",
            unique=True,
            sqlite_where=text("stage = 'LIVE'"),
            postgresql_where=text("stage = 'LIVE'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=100)
    version: int
    stage: str = Field(max_length=16)
    traffic_percent: float = 0.0
    space: str = Field(max_length=16)
    contract_hash: str = Field(max_length=64)
    data_hash: str = Field(max_length=64)
    calibration: dict[str, Any] = _json()
    metrics: dict[str, Any] = _json()
    rows: dict[str, Any] = _json()
    routing: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONType, nullable=False, server_default=text("'{}'")),
    )  # review-policy fields this release overrides (see app/ml/routing.release_policy)
    created_at: datetime = _time()
    created_by: str
    # Lineage: what it learned from, what it replaced, the job that made it.
    snapshot_id: str | None = Field(
        default=None,
        sa_column=Column(
            String(64),
            ForeignKey("training_snapshots.id", name="fk_releases_snapshot_id"),
            nullable=True,
            index=True,
        ),
    )
    parent_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("releases.id", name="fk_releases_parent_id"),
                         nullable=True),
    )
    job_id: str | None = Field(default=None, max_length=36)
    # The evaluation gate's decision and comparison table against the LIVE release.
    gate: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONType, nullable=False, server_default=text("'{}'")),
    )
    # Its predictions on its held-out rows (app.drift.prediction_reference); None when
    # stored before drift references existed.
    prediction_reference: dict[str, Any] | None = _json(nullable=True)
    quality_alarm: dict[str, Any] | None = _json(nullable=True)  # see app.quality.alarms


class TrainingSnapshot(SQLModel, table=True):
    """Immutable training data of a task at a point in time: the source rows plus every
    label people settled up to ``labels_until``. ``id`` is the SHA-256 of the task and the
    content (app.training.snapshots.snapshot_id)."""

    __tablename__ = "training_snapshots"
    id: str = Field(primary_key=True, max_length=64)
    task: str = Field(max_length=100, index=True)
    path: str  # the arrays, relative to the artifacts folder
    source_hash: str = Field(max_length=64)
    source_rows: int
    reviewed_rows: int
    labels_until: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_at: datetime = _time()
    created_by: str
    # Per input feature, what drift is measured against (app.drift.feature_reference);
    # None when taken before drift references existed (computed from the file then).
    reference: dict[str, Any] | None = _json(nullable=True)


class SnapshotLabel(SQLModel, table=True):
    """A reviewed label a snapshot holds, and which split it fell in (``train``,
    ``calibration`` or ``holdout``: holdout rows are never trained on, by any release)."""

    __tablename__ = "snapshot_labels"
    __table_args__ = (Index("ix_snapshot_labels_prediction", "prediction_id"),)
    snapshot_id: str = Field(
        sa_column=Column(String(64), ForeignKey("training_snapshots.id"), primary_key=True)
    )
    training_label_id: int = Field(
        sa_column=Column(Integer, ForeignKey("training_labels.id"), primary_key=True)
    )
    prediction_id: str = Field(max_length=36)
    split: str = Field(max_length=16)


class TrainingJob(SQLModel, table=True):
    """One retraining of a task. At most one is QUEUED or RUNNING per task: a request
    while one is active joins it (``requests`` counts them) instead of queueing twice."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        Index(
            "uq_training_jobs_one_active",
            "task",
            unique=True,
            sqlite_where=text("status IN ('QUEUED', 'RUNNING')"),
            postgresql_where=text("status IN ('QUEUED', 'RUNNING')"),
        ),
        Index("ix_training_jobs_task_created", "task", "created_at"),
    )
    id: str = Field(primary_key=True, max_length=36)
    task: str = Field(max_length=100)
    status: str = Field(max_length=16)
    trigger: str = Field(max_length=32)
    requested_by: str
    reason: str = ""
    requests: int = 1
    progress: float = 0.0
    message: str = ""
    attempts: int = 0
    release_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("releases.id"), nullable=True)
    )
    error: str | None = None
    created_at: datetime = _time()
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    heartbeat_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class ShadowOutput(SQLModel, table=True):
    """What a release that did not answer a prediction would have answered: a SHADOW
    release on LIVE traffic, or the LIVE release on CANARY traffic. Never returned."""

    __tablename__ = "shadow_outputs"
    __table_args__ = (Index("ix_shadow_outputs_release", "release_id", "created_at"),)
    prediction_id: str = Field(
        sa_column=Column(String(36), ForeignKey("predictions.id"), primary_key=True)
    )
    release_id: int = Field(
        sa_column=Column(Integer, ForeignKey("releases.id"), primary_key=True)
    )
    label: str
    confidence: float
    probabilities: list[dict[str, Any]] = _json()
    created_at: datetime = _time()


class ReleaseMember(SQLModel, table=True):
    """One trained member of a release and the skops artifact that holds it."""

    __tablename__ = "release_members"
    id: int | None = Field(default=None, primary_key=True)
    release_id: int = Field(
        sa_column=Column(Integer, ForeignKey("releases.id"), nullable=False, index=True)
    )
    name: str
    version: str
    algorithm: str
    family: str
    weight: float
    params: dict[str, Any] = _json()
    artifact_path: str
    sha256: str = Field(max_length=64)
    background_mean: list[float] = _json()
    metrics: dict[str, Any] = _json()
    library_versions: dict[str, Any] = _json()
    contract_hash: str = Field(max_length=64)
    created_at: datetime = _time()
    created_by: str
    # {} when Arbiter trained it; else how it came (see app.training.imports.Origin)
    origin: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSONType, nullable=False, server_default=text("'{}'")),
    )


class StageChange(SQLModel, table=True):
    """Who moved which release to which stage, when and why."""

    __tablename__ = "stage_changes"
    __table_args__ = (Index("ix_stage_changes_task_at", "task", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    release_id: int = Field(
        sa_column=Column(Integer, ForeignKey("releases.id"), nullable=False, index=True)
    )
    task: str
    from_stage: str | None = None
    to_stage: str
    traffic_percent: float = 0.0
    actor: str
    reason: str
    at: datetime = _time()


_KEYLESS = text("caller_key_id IS NULL")


class Status(StrEnum):
    """Where a prediction stands: answered by the models, waiting for people, settled by them."""

    ACCEPTED = "ACCEPTED"
    PENDING_REVIEW = "PENDING_REVIEW"
    REVIEWED = "REVIEWED"


class Prediction(SQLModel, table=True):
    """Everything decided for one input, stored before the caller hears of it."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint(
            "caller_key_id", "task", "idempotency_key", name="uq_predictions_idempotency"
        ),
        # The constraint above treats every NULL caller as different, so predictions made
        # without a key (``arbiter predict-file``) have their keys kept unique by this one.
        Index("uq_predictions_idempotency_keyless", "task", "idempotency_key", unique=True,
              sqlite_where=_KEYLESS, postgresql_where=_KEYLESS),
        Index("ix_predictions_task_created", "task", "created_at", "id"),
        Index("ix_predictions_task_entity", "task", "entity_key"),
    )
    id: str = Field(primary_key=True, max_length=36)
    task: str = Field(max_length=100)
    release_id: int = Field(sa_column=Column(Integer, ForeignKey("releases.id"), nullable=False))
    release_version: int
    caller_key_id: int | None = Field(default=None, foreign_key="api_keys.id")
    idempotency_key: str | None = Field(default=None, max_length=200)
    entity_key: str | None = Field(default=None, max_length=200)  # else idempotency key
    input_hash: str = Field(max_length=64)  # unsalted, for idempotency; "" once erased
    input: dict[str, Any] = _json()
    input_salt: str | None = Field(default=None, max_length=32)  # None: legacy or erased
    input_commitment: str | None = Field(default=None, max_length=64)  # salted, in the log
    label: str
    confidence: float
    probabilities: list[dict[str, Any]] = _json()
    prediction_set: list[str] = _json()
    members: list[dict[str, Any]] = _json()
    explanation: dict[str, Any] = _json()
    route: str = Field(max_length=16)
    reasons: list[dict[str, Any]] = _json()
    status: str = Field(max_length=16)
    final_label: str | None = None
    latency_ms: float
    created_at: datetime = _time()


class ReviewItem(SQLModel, table=True):
    """A routed prediction waiting for, or resolved by, people.

    At most one lease at a time lives on the item itself (token hash, holder, expiry);
    ``lease_version`` grows with every claim, so every state change is a compare-and-set
    that a stale token or a concurrent claimer cannot win."""

    __tablename__ = "review_items"
    __table_args__ = (Index("ix_review_items_queue", "task", "status", "priority", "created_at"),)
    id: str = Field(primary_key=True, max_length=36)
    prediction_id: str = Field(
        sa_column=Column(String(36), ForeignKey("predictions.id"), nullable=False, unique=True)
    )
    task: str = Field(max_length=100)
    release_version: int
    status: str = Field(max_length=16)
    priority: int = 0
    due_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    required_reviews: int = 1
    reviews_done: int = 0
    needs_adjudication: bool = False
    lease_version: int = 0
    lease_token_hash: str | None = Field(default=None, max_length=64, unique=True)
    lease_holder_id: int | None = None
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    final_label: str | None = None
    resolution: str | None = Field(default=None, max_length=16)
    resolved_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    created_at: datetime = _time()


class Review(SQLModel, table=True):
    """One reviewer's label for one item; a reviewer reviews an item at most once."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("item_id", "reviewer_id", name="uq_reviews_item_reviewer"),)
    id: int | None = Field(default=None, primary_key=True)
    item_id: str = Field(
        sa_column=Column(String(36), ForeignKey("review_items.id"), nullable=False, index=True)
    )
    reviewer_id: int = Field(foreign_key="api_keys.id")
    reviewer_name: str
    label: str
    comment: str = ""
    adjudication: bool = False
    created_at: datetime = _time()


class TrainingLabel(SQLModel, table=True):
    """A label people settled for a prediction: a training row for the next release."""

    __tablename__ = "training_labels"
    id: int | None = Field(default=None, primary_key=True)
    prediction_id: str = Field(
        sa_column=Column(String(36), ForeignKey("predictions.id"), nullable=False, unique=True)
    )
    task: str = Field(max_length=100, index=True)
    label: str
    source: str = Field(max_length=16)
    created_at: datetime = _time()


class OutboxMessage(SQLModel, table=True):
    """A job for the workers, written in the transaction of the change that causes it and
    relayed to Dramatiq after commit (at least once; actors are idempotent)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=100)
    payload: dict[str, Any] = _json()
    created_at: datetime = _time()
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    attempts: int = 0
    last_error: str | None = None


class AuditEvent(SQLModel, table=True):
    """One entry of the append-only audit log (see ``app.audit.log``); its place in the
    Merkle tree is in ``audit_leaves``. ``payload`` is kept as the canonical JSON text that
    was hashed, so both backends return it byte for byte."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_subject", "subject_type", "subject_id"),
        Index("ix_audit_events_task_kind", "task", "kind"),
    )
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    kind: str = Field(max_length=40)
    actor: str
    task: str | None = Field(default=None, max_length=100)
    subject_type: str = Field(max_length=32)
    subject_id: str = Field(max_length=64)
    payload: str
    prev_hash: str | None = Field(default=None, max_length=64)  # the legacy chain's only
    hash: str = Field(max_length=64, unique=True)


from app.db import audit_tree  # noqa: E402, F401  (registers the log's tree tables)
from app.db.monitoring import DriftReport, Outcome  # noqa: E402, F401  (on the same metadata)
