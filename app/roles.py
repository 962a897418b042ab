"""Roles, the caller of a request, and which role may do what.

The permission table lives here, one rule per public operation, so that the GraphQL layer
checks one place and a test can prove no operation is left without a rule.
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
        return self.role in (Role.AUDITOR, Role.ADMIN)


EVERYONE = frozenset(Role)

# operation name -> roles allowed to call it
PERMISSIONS: dict[str, frozenset[Role]] = {
    "tasks": EVERYONE,
    "task": EVERYONE,
    "me": EVERYONE,
    "prediction": frozenset({Role.PREDICTOR, Role.AUDITOR, Role.ADMIN}),
    "predictions": frozenset({Role.PREDICTOR, Role.AUDITOR, Role.ADMIN}),
    "releases": frozenset({Role.AUDITOR, Role.ADMIN}),
    "routingPreview": frozenset({Role.AUDITOR, Role.ADMIN}),
    "predict": frozenset({Role.PREDICTOR, Role.ADMIN}),
    "predictBatch": frozenset({Role.PREDICTOR, Role.ADMIN}),
    "reviewItems": frozenset({Role.REVIEWER, Role.AUDITOR, Role.ADMIN}),
    "reviewItem": frozenset({Role.REVIEWER, Role.AUDITOR, Role.ADMIN}),
    "reviewAgreement": frozenset({Role.AUDITOR, Role.ADMIN}),
    "setReleaseRouting": frozenset({Role.ADMIN}),
    "claimReview": frozenset({Role.REVIEWER, Role.ADMIN}),
    "submitReview": frozenset({Role.REVIEWER, Role.ADMIN}),
    "releaseReview": frozenset({Role.REVIEWER, Role.ADMIN}),
    "release": frozenset({Role.AUDITOR, Role.ADMIN}),
    "trainingJob": frozenset({Role.AUDITOR, Role.ADMIN}),
    "trainingJobs": frozenset({Role.AUDITOR, Role.ADMIN}),
    "retrain": frozenset({Role.ADMIN}),
    "releaseComparison": frozenset({Role.AUDITOR, Role.ADMIN}),
    "promoteRelease": frozenset({Role.ADMIN}),
    "rollback": frozenset({Role.ADMIN}),
    "verifyAuditLog": frozenset({Role.AUDITOR, Role.ADMIN}),
    "auditEvents": frozenset({Role.AUDITOR, Role.ADMIN}),
    "predictionStory": frozenset({Role.AUDITOR, Role.ADMIN}),
    "apiKeys": frozenset({Role.ADMIN}),
    "createApiKey": frozenset({Role.ADMIN}),
    "revokeApiKey": frozenset({Role.ADMIN}),
    # subscriptions (``predictions`` shares the query's rule: predictors follow their own)
    "reviewEvents": frozenset({Role.REVIEWER, Role.AUDITOR, Role.ADMIN}),
    "releaseEvents": frozenset({Role.AUDITOR, Role.ADMIN}),
}


def allowed(operation: str, role: Role) -> bool:
    """Unknown operations are refused: a new field without a rule is closed, not open."""
    return role in PERMISSIONS.get(operation, frozenset())
