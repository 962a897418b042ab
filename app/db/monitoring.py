"""What watching a task stores: outcomes (ground truth that arrived after a prediction, a
loan that defaulted months later, one per prediction) and drift reports. Beside ``tables``
(which is full), on the same metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db.types import JSONType, UTCDateTime, utcnow


class Outcome(SQLModel, table=True):
    """What really happened to the subject of one prediction, and who recorded it."""

    __tablename__ = "outcomes"
    __table_args__ = (Index("ix_outcomes_task_release", "task", "release_id"),)
    id: int | None = Field(default=None, primary_key=True)
    prediction_id: str = Field(
        sa_column=Column(String(36), ForeignKey("predictions.id"), nullable=False, unique=True)
    )
    task: str = Field(max_length=100)
    release_id: int = Field(sa_column=Column(Integer, ForeignKey("releases.id"), nullable=False))
    label: str
    observed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(default_factory=utcnow,
                                  sa_column=Column(UTCDateTime, nullable=False))
    recorded_by: str


class DriftReport(SQLModel, table=True):
    """A task's drift report as the periodic check stored it: at most one per task and
    check period (``bucket`` is the period's start), so a check run twice stores one."""

    __tablename__ = "drift_reports"
    __table_args__ = (
        UniqueConstraint("task", "bucket", name="uq_drift_reports_task_bucket"),
        Index("ix_drift_reports_task_computed", "task", "computed_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=100)
    release_id: int = Field(sa_column=Column(Integer, ForeignKey("releases.id"), nullable=False))
    release_version: int
    window: str = Field(max_length=16)
    bucket: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    computed_at: datetime = Field(default_factory=utcnow,
                                  sa_column=Column(UTCDateTime, nullable=False))
    verdict: str = Field(max_length=20)
    drifted: bool
    share: float
    details: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
