"""The core's vocabularies exposed to GraphQL: ``strawberry.enum`` on each core class itself
(no copy), under its public name. GraphQL shows the member names; resolvers pass members.

One module below every type: Strawberry reads an enum's definition when a type using it is
declared, so each class is exposed here, before any module declares a type with it."""

from __future__ import annotations

import strawberry

from app.db.tables import Status
from app.drift.report import Verdict
from app.events.topics import ReleaseEventKind, ReviewChange
from app.ml.algorithms import OutputSpace
from app.ml.routing import Route
from app.ml.task import FeatureType
from app.predictions.charts import ChartKind, ImageFormat
from app.releases.store import Stage
from app.training.jobs import JobStatus
from review.items import ItemStatus

__all__ = ["ChartKind", "FeatureType", "ImageFormat", "ItemStatus", "JobStatus", "OutputSpace",
           "ReleaseEventKind", "ReviewChange", "Route", "Stage", "Status", "Verdict"]

strawberry.enum(FeatureType, description="How a feature's values are written.")
strawberry.enum(OutputSpace, name="ExplanationSpace",
                description="The space in which an explanation adds up exactly.")
strawberry.enum(ImageFormat, name="PictureFormat",
                description="File format of an explanation picture.")
strawberry.enum(ChartKind, description="WATERFALL walks from the base value to the output, one "
                "feature at a time; BAR shows each feature's contribution from zero.")
strawberry.enum(Route, description="AUTO: answered by the models alone. REVIEW: sent to people.")
strawberry.enum(Status, name="PredictionStatus", description="Where a prediction stands.")
strawberry.enum(Stage, name="ReleaseStage", description="The life stage of a release.")
strawberry.enum(ItemStatus, name="ReviewStatus", description="Where a review item stands.")
strawberry.enum(JobStatus, description="Where a retraining job stands.")
strawberry.enum(Verdict, name="DriftVerdict", description="What a drift report concluded.")
strawberry.enum(ReleaseEventKind, description="What happened to a task's releases.")
strawberry.enum(ReviewChange, description="What changed in the review queue.")
