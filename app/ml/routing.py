"""Deciding AUTO or REVIEW for one prediction, with every reason that applied."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from app.ml.ensemble import Outputs
from app.ml.task import ReviewPolicy

AUDIT_HASH_SPACE = 2**64


class Route(StrEnum):
    """Where a prediction goes: answered as is, or to people."""

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


def decide_routes(
    policy: ReviewPolicy, classes: tuple[str, ...], outputs: Outputs, prediction_ids: Sequence[str]
) -> list[tuple[Route, list[Reason]]]:
    """AUTO or REVIEW for each row of a batch (``prediction_ids`` in row order), with every
    reason that applied. The checks are made on whole columns; reasons are built only for
    the rows they apply to."""
    level = policy.confidence_level
    sets = outputs.prediction_sets.tolist()
    failed = [(m.name, m.error) for m in outputs.members if m.error is not None]
    ran = [(m.name, m.probabilities.argmax(axis=1).tolist()) for m in outputs.members
           if m.probabilities is not None]
    disagree = policy.route_on_disagreement and any(labels != ran[0][1] for _, labels in ran)
    check_ood = policy.route_on_ood and policy.ood_quantile < 1.0
    flagged = np.flatnonzero(outputs.ood_flags).tolist() if check_ood else []
    findings = dict(zip(flagged, outputs.findings(flagged), strict=True))
    decided = []
    for i, prediction_id in enumerate(prediction_ids):
        reasons: list[Reason] = []
        in_set = [c for c, inside in zip(classes, sets[i], strict=True) if inside]
        if len(in_set) != 1:
            what = f"holds {len(in_set)} classes ({', '.join(in_set)})" if in_set else "is empty"
            reasons.append(Reason(
                "LOW_CONFIDENCE",
                f"the {level:.0%} conformal prediction set {what}; AUTO needs exactly one",
                value=len(in_set), threshold=1))
        for name, error in failed:
            reasons.append(Reason("MEMBER_FAILURE", f"member {name} failed: {error}", value=name))
        if disagree:
            labels = {name: classes[said[i]] for name, said in ran}
            if len(set(labels.values())) > 1:
                said_all = ", ".join(f"{n}={lab}" for n, lab in labels.items())
                reasons.append(Reason("MEMBER_DISAGREEMENT", f"members disagree: {said_all}",
                                      value=labels))
        finding = findings.get(i)
        if finding is not None:
            reasons.append(Reason("OUT_OF_DISTRIBUTION", finding.describe(),
                                  value=finding.score, threshold=finding.threshold))
        draw = audit_draw(prediction_id)
        if draw < policy.audit_rate:
            reasons.append(Reason(
                "AUDIT_SAMPLE",
                f"random audit sample (draw {draw:.4f} < rate {policy.audit_rate})",
                value=draw, threshold=policy.audit_rate))
        decided.append((Route.REVIEW if reasons else Route.AUTO, reasons))
    return decided
