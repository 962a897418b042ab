"""How likely people were to label a reviewed row: the weights that let the evaluation
gate judge reviewed rows as a sample of traffic, not of what routing sent to review.

A prediction routed by a rule (low confidence, disagreement, out of distribution, a held
release) was labelled with probability 1; one reviewed *only* as the random audit sample
was one of the would-be-AUTO predictions drawn at the audit rate a, so it stands for 1/a of
them (Horvitz-Thompson); an outcome is taken as known for every prediction (probability 1).
Within the reviewed rows the weights are scaled to average 1, so the reviewed slice keeps
its share of all held-out rows against the source rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select as sa_select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.monitoring import Outcome
from app.db.tables import Prediction
from app.quality.estimates import AUDIT_SAMPLE, NOT_RULES

CHUNK = 500


def inclusion_weight(reasons: Sequence[dict[str, Any]], has_outcome: bool) -> float:
    """1 / the probability that this prediction was labelled (see the module)."""
    codes = {r.get("code") for r in reasons}
    if has_outcome or not codes or not codes <= NOT_RULES or AUDIT_SAMPLE not in codes:
        return 1.0
    rate = next((r.get("threshold") for r in reasons if r.get("code") == AUDIT_SAMPLE), None)
    return 1.0 / float(rate) if isinstance(rate, int | float) and rate > 0 else 1.0


async def reviewed_weights(session: AsyncSession, prediction_ids: Sequence[str]) -> np.ndarray:
    """The weight of each reviewed row (in the order of ``prediction_ids``), mean 1."""
    found: dict[str, float] = {}
    ids = list(prediction_ids)
    for start in range(0, len(ids), CHUNK):
        query = (sa_select(col(Prediction.id), col(Prediction.reasons), col(Outcome.id))
                 .outerjoin(Outcome, col(Outcome.prediction_id) == col(Prediction.id))
                 .where(col(Prediction.id).in_(ids[start:start + CHUNK])))
        for pid, reasons, outcome in (await session.exec(query)).all():  # type: ignore[call-overload]
            found[pid] = inclusion_weight(list(reasons), outcome is not None)
    weights = np.array([found.get(pid, 1.0) for pid in ids], dtype=float)
    return weights / weights.mean() if len(weights) else weights
