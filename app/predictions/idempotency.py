"""Idempotency keys: checked as callers send them, and a repeated key answered with the
prediction stored under it (when its input is the same)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Prediction
from app.errors import BadRequestError, IdempotencyConflictError
from app.predictions.inputs import Inputs, input_hash

IDEMPOTENCY_KEY_MAX = 200
# Keys looked up per query (well under the parameter limits of SQLite and asyncpg).
_LOOKUP_KEYS = 1_000


def check_key(key: str | None, name: str = "idempotencyKey") -> str | None:
    """The key, if it is 1 to ``IDEMPOTENCY_KEY_MAX`` characters (``name``: the argument)."""
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise BadRequestError(
            f"{name} must be 1 to {IDEMPOTENCY_KEY_MAX} characters, got {len(key)}"
        )
    return key


def keys_per_input(keys: Sequence[str | None] | None, inputs: int, name: str
                   ) -> list[str | None]:
    """One checked key per input (none given: None for each)."""
    if keys is None:
        return [None] * inputs
    if len(keys) != inputs:
        raise BadRequestError(
            f"{name} must have one key per input: {len(keys)} keys, {inputs} inputs")
    return [check_key(k, name) for k in keys]


def no_repeats(keys: Sequence[str | None]) -> None:
    """Refuse a batch that names one prediction twice."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            raise BadRequestError(
                f"idempotencyKeys repeats {key!r} (inputs {first[key]} and {i}); "
                f"a key names one prediction")
        first[key] = i


async def stored_answers(sessions: async_sessionmaker[AsyncSession], inputs: Inputs
                         ) -> list[Prediction | None]:
    """Per input, the prediction already stored under its key (its input must be the
    same), or None for an input to predict."""
    answers: list[Prediction | None] = [None] * len(inputs.keys)
    keyed = {k: i for i, k in enumerate(inputs.keys) if k is not None}
    if not keyed:
        return answers
    names = list(keyed)
    async with sessions() as session:
        for start in range(0, len(names), _LOOKUP_KEYS):
            found = await session.exec(select(Prediction).where(
                Prediction.caller_key_id == inputs.caller_id,
                Prediction.task == inputs.task.name,
                col(Prediction.idempotency_key).in_(names[start:start + _LOOKUP_KEYS])))
            for p in found:
                i = keyed[p.idempotency_key or ""]
                answers[i] = _replay(p, inputs.rows[i], p.idempotency_key or "")
    return answers


def _replay(existing: Prediction, raw: dict[str, Any], key: str) -> Prediction:
    if existing.input_hash != input_hash(raw):
        raise IdempotencyConflictError(key, existing.id)
    return existing
