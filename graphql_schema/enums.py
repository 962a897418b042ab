"""The core's vocabularies exposed to GraphQL: ``strawberry.enum`` on each core class itself
(no copy), under its public name. GraphQL shows the member names; resolvers pass members.

One module below every type: Strawberry reads an enum's definition when a type using it is
declared, so each class is exposed here, before any module declares a type with it."""

from __future__ import annotations

import strawberry

from app.access.roles import Role
from app.db.tables import Status
from app.drift.report import Verdict
from app.events.topics import ReleaseEventKind, ReviewChange
from app.ml.algorithms import OutputSpace
from app.ml.routing import Route
from app.ml.task import FeatureType
from app.predictions.charts import ChartKind, ImageFormat
from app.predictions.explanation import ExplanationStatus
from app.releases.store import Stage
from app.risk.certificates import AutoErrorScope
from app.training.jobs import JobStatus
from app.training.snapshots import Split
from app.training.triggers import Trigger
from review.items import ItemStatus, ReviewKind
from review.queue import Resolution

__all__ = ["SPLIT_DEPRECATED", "AutoErrorScope", "ChartKind", "ExplanationStatus", "FeatureType",
           "ImageFormat", "ItemStatus", "JobStatus", "OutputSpace", "ReleaseEventKind",
           "Resolution", "ReviewChange", "ReviewKind", "Role", "Route", "Split", "Stage",
           "Status", "Trigger", "Verdict"]

SPLIT_DEPRECATED = ("Use dataSplit (the DataSplit enum); this lowercase text goes in the next "
                    "release.")

strawberry.enum(FeatureType, description="How a feature's values are written.")
strawberry.enum(OutputSpace, name="ExplanationSpace",
                description="The space in which an explanation adds up exactly.")
strawberry.enum(ExplanationStatus, description="OK, or PARTIAL when a member failed and the "
                "others decided.")
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
strawberry.enum(AutoErrorScope, description="CLASS: the bound holds for the AUTO predictions "
                "of each predicted class. OVERALL: for all AUTO predictions together.")
strawberry.enum(Resolution, description="How a review item was settled: reviewers agreed, or "
                "an adjudicator decided their disagreement.")
strawberry.enum(ReviewKind, description="An independent review, or an adjudication that "
                "decided a disagreement.")
strawberry.enum(Split, name="DataSplit", description="What a reviewed label served in a "
                "snapshot: TRAIN, CALIBRATION, or HOLDOUT (judged the release, never trained "
                "on).")
strawberry.enum(Trigger, name="TrainingTrigger", description="Who or what asked for a "
                "retraining.")
strawberry.enum(Role, description="What an API key may do: PREDICTOR predicts and reads its own "
                "predictions, REVIEWER works the review queue, AUDITOR reads everything and "
                "writes nothing, ADMIN manages tasks, releases and keys.")
