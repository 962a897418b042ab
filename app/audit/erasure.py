"""Erasing a person's input: the stored input, its salt and the values its explanation
and its reasons repeat (an out-of-distribution reason's "loan_amount=950000 (training
median ...)", a rare level) are removed, in one audited transaction, while the log stays
verifiable (the events commit to the input only by its salted hash, which stays and can no
longer be checked against guesses without the salt; the event commits to the row as the
erasure left it)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.tables import Prediction
from app.errors import BadRequestError, NotFoundError


async def erase_input(sessions: async_sessionmaker[AsyncSession], prediction_id: str,
                      actor: str) -> Prediction:
    """Remove a prediction's input (``prediction.input_erased``); refused when it is gone."""
    async with sessions() as session, session.begin():
        p = await session.get(Prediction, prediction_id)
        if p is None:
            raise NotFoundError(f"no prediction {prediction_id!r}")
        if p.input_hash == "":
            raise BadRequestError(f"the input of prediction {prediction_id!r} is already erased")
        p.input, p.input_salt, p.input_hash = {}, None, ""
        p.explanation = _without_values(p.explanation)
        p.reasons = reasons_without_values(p.reasons)
        session.add(p)
        audit.append(session, audit.Kind.INPUT_ERASED, actor, "prediction", p.id,
                     {"inputCommitment": p.input_commitment}, p.task)
    return p


def _without_values(explanation: dict[str, object]) -> dict[str, object]:
    """The explanation less the input values its contributions repeat (SHAP stays)."""
    contributions = explanation.get("contributions")
    if not isinstance(contributions, list):
        return explanation
    return {**explanation, "contributions": [{**c, "value": None} for c in contributions]}


# Reasons whose detail may repeat input values: an out-of-distribution detail names them
# (``app.ml.ood``), a member's failure quotes its error, which may quote the value it could
# not use; the others speak of the model.
INPUT_REASONS = frozenset({"OUT_OF_DISTRIBUTION", "MEMBER_FAILURE"})
ERASED_DETAIL = "input values erased"


def reasons_without_values(reasons: list[dict[str, object]]) -> list[dict[str, object]]:
    """The reasons less the input values their details repeat (code, score and threshold
    stay)."""
    return [{**r, "detail": ERASED_DETAIL} if r.get("code") in INPUT_REASONS else r
            for r in reasons]
