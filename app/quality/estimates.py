"""Live AUTO quality of a release, per predicted class and overall, from the labelled
predictions that stand for its AUTO traffic without bias.

Which labelled predictions count: those the routing rules let through (route AUTO, or sent
to review *only* as a random audit sample, or only because the release is held), labelled
by a recorded outcome or, for the audit sample, by its review. The audit sample is a
uniform draw from the would-be-AUTO predictions (fixed by the prediction id, independent of
the input), so its labels estimate AUTO error without bias; predictions routed by a rule
(low confidence, disagreement, out of distribution) are left out, since they are exactly
the ones AUTO does not answer. An outcome counts when its prediction was would-be-AUTO,
with weight one like an audited prediction: this is unbiased when outcomes arrive
independently of whether the prediction was right (every loan's fate is known at
maturity), and an outcome replaces the reviewer's label of the same prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_
from sqlalchemy import select as sa_select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.monitoring import Outcome
from app.db.tables import Prediction, Release, Status
from app.ml.routing import Route
from app.ml.task import TaskSpec
from app.quality.bounds import Bounds, confidence_sequence, exceeds
from app.quality.holds import BOUND_EXCEEDED
from app.releases.store import live_release, release_by_version

AUDIT_SAMPLE = "AUDIT_SAMPLE"
# Reasons that do not make a prediction "not AUTO": the random audit, the release's hold.
NOT_RULES = frozenset({AUDIT_SAMPLE, BOUND_EXCEEDED})


@dataclass(frozen=True)
class QualityRow:
    """AUTO error of one predicted class (``label``), or of all (None), with its
    time-uniform interval at ``confidence``; ``exceeded``: shown above the bound."""

    label: str | None
    bounds: Bounds
    max_auto_error: float | None
    confidence: float
    exceeded: bool

    def to_json(self) -> dict[str, Any]:
        b = self.bounds
        return {"label": self.label, "n": b.n, "errors": b.errors, "estimate": b.estimate,
                "lowerBound": b.lower, "upperBound": b.upper,
                "maxAutoError": self.max_auto_error, "confidence": self.confidence,
                "exceeded": self.exceeded}


@dataclass(frozen=True)
class AutoQuality:
    """A release's rows (overall first, then each class) and whether its bound is broken."""

    task: str
    release: Release
    rows: list[QualityRow]
    scope: str

    @property
    def breached(self) -> list[QualityRow]:
        """The rows that break the bound in the task's scope."""
        return [r for r in self.rows if r.exceeded and (r.label is None) == (
            self.scope == "overall")]


def truth(route: str, reasons: list[dict[str, Any]], status: str, final_label: str | None,
          outcome: str | None) -> str | None:
    """The true label of a prediction that stands for AUTO traffic, else None."""
    codes = {r.get("code") for r in reasons}
    if route != Route.AUTO and not codes <= NOT_RULES:
        return None  # routed by a rule: not AUTO traffic
    if outcome is not None:
        return outcome
    if AUDIT_SAMPLE in codes and status == Status.REVIEWED:
        return final_label
    return None


async def labelled(session: AsyncSession, release: Release, since: datetime | None
                   ) -> list[tuple[str, str]]:
    """(predicted, true) of the release's predictions that count (see the module)."""
    query = (sa_select(col(Prediction.label), col(Prediction.route), col(Prediction.reasons),
                       col(Prediction.status), col(Prediction.final_label), col(Outcome.label))
             .outerjoin(Outcome, col(Outcome.prediction_id) == col(Prediction.id))
             .where(col(Prediction.task) == release.task,
                    col(Prediction.release_id) == release.id,
                    or_(col(Outcome.id).is_not(None), col(Prediction.status) == Status.REVIEWED)))
    if since is not None:
        query = query.where(col(Prediction.created_at) >= since)
    # six columns: more than sqlmodel's select() is typed for, the same at run time
    rows = (await session.exec(query)).all()  # type: ignore[call-overload]
    pairs = [(r[0], truth(r[1], list(r[2]), r[3], r[4], r[5])) for r in rows]
    return [(predicted, true) for predicted, true in pairs if true is not None]


def quality_rows(task: TaskSpec, pairs: list[tuple[str, str]]) -> list[QualityRow]:
    """Overall (at 1 - delta) and per predicted class (at 1 - delta / classes, so the
    classes' intervals hold together)."""
    policy = task.review
    delta = 1 - policy.risk_confidence
    eps = policy.max_auto_error
    groups: list[tuple[str | None, float]] = [(None, delta)]
    groups += [(c, delta / len(task.classes)) for c in task.classes]
    rows = []
    for label, alpha in groups:
        mine = [(p, t) for p, t in pairs if label is None or p == label]
        bounds = confidence_sequence(len(mine), sum(p != t for p, t in mine), alpha)
        rows.append(QualityRow(label, bounds, eps, 1 - alpha,
                               eps is not None and exceeds(bounds, eps)))
    return rows


async def auto_quality(session: AsyncSession, task: TaskSpec, version: int | None = None,
                       since: datetime | None = None) -> AutoQuality | None:
    """The live AUTO quality of release ``version`` (default: LIVE; None without one)."""
    release = (await live_release(session, task.name) if version is None
               else await release_by_version(session, task.name, version))
    if release is None:
        return None
    pairs = await labelled(session, release, since)
    return AutoQuality(task.name, release, quality_rows(task, pairs),
                       task.review.auto_error_scope)
