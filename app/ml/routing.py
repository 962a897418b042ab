"""Deciding AUTO or REVIEW for one prediction, with every reason that applied."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from app.ml.ensemble import RowResult
from app.ml.task import ReviewPolicy

AUDIT_HASH_SPACE = 2**64


class Route(StrEnum):
    AUTO = "AUTO"
    REVIEW = "REVIEW"


@dataclass(frozen=True)
class Reason:
    """Why a prediction went to review: a stable code and a sentence with the numbers."""

    code: str
    detail: str
    value: Any = None
    threshold: Any = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def audit_draw(prediction_id: str) -> float:
    """A uniform number in [0, 1) fixed by the prediction id, so the audit sample is
    reproducible and independent of everything the model saw."""
    digest = hashlib.sha256(f"audit:{prediction_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / AUDIT_HASH_SPACE


def decide_route(
    policy: ReviewPolicy, classes: tuple[str, ...], row: RowResult, prediction_id: str
) -> tuple[Route, list[Reason]]:
    reasons: list[Reason] = []
    in_set = [classes[i] for i, inside in enumerate(row.prediction_set) if inside]
    level = policy.confidence_level
    if len(in_set) != 1:
        what = f"holds {len(in_set)} classes ({', '.join(in_set)})" if in_set else "is empty"
        reasons.append(
            Reason(
                "LOW_CONFIDENCE",
                f"the {level:.0%} conformal prediction set {what}; AUTO needs exactly one",
                value=len(in_set),
                threshold=1,
            )
        )
    failed = [m for m in row.members if m.error]
    for m in failed:
        reasons.append(Reason("MEMBER_FAILURE", f"member {m.name} failed: {m.error}", value=m.name))
    ran = [m for m in row.members if m.probabilities is not None]
    labels = {
        m.name: classes[int(m.probabilities.argmax())] for m in ran if m.probabilities is not None
    }
    if policy.route_on_disagreement and len(set(labels.values())) > 1:
        said = ", ".join(f"{n}={lab}" for n, lab in labels.items())
        reasons.append(Reason("MEMBER_DISAGREEMENT", f"members disagree: {said}", value=labels))
    ood = row.ood
    ood_on = policy.route_on_ood and policy.ood_quantile < 1.0
    if ood_on and ood is not None and ood.out_of_distribution:
        reasons.append(
            Reason("OUT_OF_DISTRIBUTION", ood.describe(), value=ood.score, threshold=ood.threshold)
        )
    draw = audit_draw(prediction_id)
    if draw < policy.audit_rate:
        reasons.append(
            Reason(
                "AUDIT_SAMPLE",
                f"random audit sample (draw {draw:.4f} < rate {policy.audit_rate})",
                value=draw,
                threshold=policy.audit_rate,
            )
        )
    return (Route.REVIEW if reasons else Route.AUTO), reasons
