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
from app.risk import report
from app.risk.certificates import RiskControl

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
    policy: ReviewPolicy, classes: tuple[str, ...], outputs: Outputs,
    prediction_ids: Sequence[str], risk: RiskControl | None = None,
) -> list[tuple[Route, list[Reason]]]:
    """AUTO or REVIEW for each row of a batch (``prediction_ids`` in row order), with every
    reason that applied. With ``risk`` (the policy sets max_auto_error), a row is AUTO only
    under its class's certified threshold, which replaces the conformal-set and disagreement
    rules; member failures, out-of-distribution inputs and the audit sample route either way.
    The checks are made on whole columns; reasons are built only for the rows they apply to."""
    sets = outputs.prediction_sets.tolist()
    if risk is None:
        confidence = [_set_reason(policy.confidence_level, classes, s) for s in sets]
    else:
        confidence = _risk_reasons(risk, policy.confidence_level, classes, outputs, sets)
    failed = [Reason("MEMBER_FAILURE", f"member {m.name} failed: {m.error}", value=m.name)
              for m in outputs.members if m.error is not None]
    disagreeing = _disagreements(classes, outputs) if policy.route_on_disagreement and (
        risk is None) else {}
    check_ood = policy.route_on_ood and policy.ood_quantile < 1.0
    flagged = np.flatnonzero(outputs.ood_flags).tolist() if check_ood else []
    findings = dict(zip(flagged, outputs.findings(flagged), strict=True))
    decided = []
    for i, prediction_id in enumerate(prediction_ids):
        reasons = [*confidence[i], *failed, *disagreeing.get(i, [])]
        finding = findings.get(i)
        if finding is not None:
            reasons.append(Reason("OUT_OF_DISTRIBUTION", finding.describe(),
                                  value=finding.score, threshold=finding.threshold))
        reasons.extend(_audit_reason(policy.audit_rate, prediction_id))
        decided.append((Route.REVIEW if reasons else Route.AUTO, reasons))
    return decided


def _describe_set(level: float, classes: tuple[str, ...], members: list[bool]) -> str:
    """The conformal set in words; an empty one says what it means."""
    in_set = [c for c, inside in zip(classes, members, strict=True) if inside]
    if in_set:
        return f"the {level:.0%} conformal prediction set holds {len(in_set)} " \
            f"class{'es' if len(in_set) > 1 else ''} ({', '.join(in_set)})"
    return (f"the {level:.0%} conformal prediction set is empty: no class is as probable as "
            f"the true class was on {level:.0%} of the calibration rows, so the model is less "
            "sure of every class than it usually is of the right one (an unusual or ambiguous "
            "input; the label is only the most probable class)")


def _set_reason(level: float, classes: tuple[str, ...], members: list[bool]) -> list[Reason]:
    """LOW_CONFIDENCE unless the conformal set holds exactly one class."""
    size = sum(members)
    if size == 1:
        return []
    return [Reason("LOW_CONFIDENCE", f"{_describe_set(level, classes, members)}; AUTO needs "
                   "exactly one class", value=size, threshold=1)]


def _risk_reasons(risk: RiskControl, level: float, classes: tuple[str, ...],
                  outputs: Outputs, sets: list[list[bool]]) -> list[list[Reason]]:
    """Per row: NOT_CERTIFIED when its class has no certified threshold, LOW_CONFIDENCE when
    its error score is above it, nothing when it may be AUTO."""
    scores, auto = risk.auto(outputs.probabilities)
    certified = risk.certified(outputs.labels).tolist()
    promise = report.promise(risk)
    reasons: list[list[Reason]] = []
    for i, (ok, score, c) in enumerate(zip(auto.tolist(), scores.tolist(),
                                           outputs.labels.tolist(), strict=True)):
        cert = risk.classes[c] if risk.scope == "class" else risk.overall
        if not certified[i]:
            reasons.append([Reason("NOT_CERTIFIED", f"{report.uncertified(risk, cert)}: every "
                                   "such prediction is reviewed",
                                   value=cert.calibration_rows, threshold=cert.rows_needed)])
        elif not ok:
            reasons.append([Reason(
                "LOW_CONFIDENCE",
                f"error score {score:.3f} (1 - top probability) is above the threshold "
                f"{cert.threshold:.3f} certified for {_whose(risk, classes[c])} ({promise}); "
                f"{_describe_set(level, classes, sets[i])}",
                value=score, threshold=cert.threshold)])
        else:
            reasons.append([])
    return reasons


def _whose(risk: RiskControl, label: str) -> str:
    return f"predictions of {label}" if risk.scope == "class" else "all predictions"


def _disagreements(classes: tuple[str, ...], outputs: Outputs) -> dict[int, list[Reason]]:
    """MEMBER_DISAGREEMENT for each row whose members that ran predict different classes."""
    ran = [(m.name, m.probabilities.argmax(axis=1)) for m in outputs.members
           if m.probabilities is not None]
    if len(ran) < 2:
        return {}
    said = np.stack([labels for _, labels in ran])
    rows = np.flatnonzero((said != said[0]).any(axis=0)).tolist()
    found = {}
    for i in rows:
        labels = {name: classes[int(said[k, i])] for k, (name, _) in enumerate(ran)}
        said_all = ", ".join(f"{n}={lab}" for n, lab in labels.items())
        found[i] = [Reason("MEMBER_DISAGREEMENT", f"members disagree: {said_all}",
                           value=labels)]
    return found


def _audit_reason(rate: float, prediction_id: str) -> list[Reason]:
    draw = audit_draw(prediction_id)
    if draw >= rate:
        return []
    return [Reason("AUDIT_SAMPLE", f"random audit sample (draw {draw:.4f} < rate {rate})",
                   value=draw, threshold=rate)]
