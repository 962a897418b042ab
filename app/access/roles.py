"""Roles, the caller of a request, and which role may do what.

The permission tables live here: one rule per public operation, and one per object type
(with overrides for single fields), so that the GraphQL layer checks one place and a test
can prove no operation or field is left without a rule (docs/api.md's *Roles* table agrees).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    PREDICTOR = "predictor"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's id, name and role."""

    key_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"

    @property
    def reads_everything(self) -> bool:
        """Auditors and admins see every caller's predictions; others only their own."""
        return self.role in READERS


EVERYONE = frozenset(Role)
# Auditors and admins read everything: every caller's predictions, personal data,
# releases, lineage, the audit log. Every "auditor or admin" rule is this set.
READERS = frozenset({Role.AUDITOR, Role.ADMIN})
ADMIN_ONLY = frozenset({Role.ADMIN})
REVIEW_READERS = frozenset({Role.REVIEWER, *READERS})
PREDICTION_READERS = frozenset({Role.PREDICTOR, *READERS})  # predictors read their own
PREDICTORS = frozenset({Role.PREDICTOR, Role.ADMIN})
REVIEWERS = frozenset({Role.REVIEWER, Role.ADMIN})

# operation name -> roles allowed to call it
PERMISSIONS: dict[str, frozenset[Role]] = {
    "tasks": EVERYONE,
    "task": EVERYONE,
    "me": EVERYONE,
    "prediction": PREDICTION_READERS,
    "predictions": PREDICTION_READERS,
    "releases": READERS,
    "routingPreview": READERS,
    "predict": PREDICTORS,
    "predictBatch": PREDICTORS,
    "reviewItems": REVIEW_READERS,
    "reviewItem": REVIEW_READERS,
    "reviewAgreement": READERS,
    "reviewAgreementJson": READERS,
    "setReleaseRouting": ADMIN_ONLY,
    "claimReview": REVIEWERS,
    "submitReview": REVIEWERS,
    "releaseReview": REVIEWERS,
    "release": READERS,
    "trainingJob": READERS,
    "trainingJobs": READERS,
    "retrain": ADMIN_ONLY,
    "releaseComparison": READERS,
    "promoteRelease": ADMIN_ONLY,
    "rollback": ADMIN_ONLY,
    "driftReport": READERS,
    "latestDriftReport": READERS,
    "autoQuality": READERS,
    "recordOutcomes": PREDICTORS,
    "verifyAuditLog": READERS,
    "auditEvents": READERS,
    "predictionStory": READERS,
    "apiKeys": ADMIN_ONLY,
    "createApiKey": ADMIN_ONLY,
    "revokeApiKey": ADMIN_ONLY,
    # subscriptions (``predictions`` shares the query's rule: predictors follow their own)
    "reviewEvents": REVIEW_READERS,
    "releaseEvents": READERS,
}

ROOT_TYPES = frozenset({"Query", "Mutation", "Subscription"})

# object type -> roles that may read its fields (unless FIELD_RULES says otherwise)
TYPE_RULES: dict[str, frozenset[Role]] = {
    # what a task is: everyone builds forms from it
    **dict.fromkeys(("Task", "Feature", "DerivedFeature", "MemberSpec", "Me"), EVERYONE),
    # a prediction: predictors (their own), reviewers (through a review item), readers
    **dict.fromkeys(("Prediction", "ClassProbability", "MemberPrediction", "Explanation",
                     "Contribution", "Reason", "PredictionConnection", "PredictionEdge",
                     "PageInfo"), EVERYONE),
    # the review queue
    **dict.fromkeys(("ReviewItem", "ReviewItemConnection", "ReviewItemEdge", "ReviewEvent"),
                    REVIEW_READERS),
    "ReviewLease": REVIEWERS,
    # releases, training, lineage, comparisons: read by auditors, changed by admins
    **dict.fromkeys(("Release", "StageChange", "LearnedLabel", "LearnedLabelConnection",
                     "LearnedLabelEdge", "LabelUse", "Snapshot", "TrainingJob",
                     "TrainingJobConnection", "TrainingJobEdge", "ReleaseComparison",
                     "ComparisonTally", "RoutingPreview", "ReasonCount", "ReleaseEvent",
                     "ReleaseRisk", "ClassRisk"),
                    READERS),
    # reviewer agreement statistics
    **dict.fromkeys(("ReviewAgreement", "OverallAgreement", "FleissKappa", "ReviewerAgreement",
                     "ClassAgreement", "ReleaseAgreement"), READERS),
    # drift: read by auditors and admins
    **dict.fromkeys(("DriftReport", "FeatureDrift", "RateBucket", "AutoQuality"), READERS),
    "OutcomesRecorded": PREDICTORS,
    # the audit log and a prediction's story: read by auditors and admins
    **dict.fromkeys(("AuditEvent", "AuditEventConnection", "AuditEventEdge", "AuditVerification",
                     "PredictionStory", "ReviewRecord", "ReleaseMember", "AuditProof",
                     "AuditCheckpoint"), READERS),
    # API keys: admins only
    **dict.fromkeys(("ApiKey", "CreatedApiKey"), ADMIN_ONLY),
}

# "Type.field" -> roles, where a field is narrower than its type
FIELD_RULES: dict[str, frozenset[Role]] = {
    # which releases learned from a label is release lineage, not the caller's business
    "Prediction.trainedInto": READERS,
    # the caller's own retry key: not shown to reviewers
    "Prediction.idempotencyKey": PREDICTION_READERS,
    # how long the server took is operations data
    "Prediction.latencyMs": PREDICTION_READERS,
}


def allowed(operation: str, role: Role) -> bool:
    """Unknown operations are refused: a new field without a rule is closed, not open."""
    return role in PERMISSIONS.get(operation, frozenset())


def field_allowed(type_name: str, field: str, role: Role) -> bool:
    """May ``role`` select ``type_name.field``? Root fields are operations; any other field
    follows its own rule, else its type's; a type without a rule is closed."""
    if type_name in ROOT_TYPES:
        return allowed(field, role)
    rule = FIELD_RULES.get(f"{type_name}.{field}", TYPE_RULES.get(type_name, frozenset()))
    return role in rule
