"""Idempotency keys: checked as callers send them, and a repeated key answered with the
prediction stored under it (when its input is the same)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, String, bindparam, func, true
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.db.tables import Prediction
from app.errors import BadRequestError, IdempotencyConflictError
from app.predictions.inputs import Inputs, input_hash

IDEMPOTENCY_KEY_MAX = 200
# Keys looked up per query on SQLite (well under its limit of bound parameters).
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
    async with sessions() as session:
        dialect = session.sync_session.get_bind().dialect.name
        for query in _lookups(dialect, inputs.caller_id, inputs.task.name, list(keyed)):
            for p in await session.exec(query):
                i = keyed[p.idempotency_key or ""]
                answers[i] = _replay(p, inputs.rows[i], p.idempotency_key or "")
    return answers


def _lookups(dialect: str, caller_id: int | None, task: str, keys: list[str]
             ) -> list[SelectOfScalar[Prediction]]:
    """The queries that find the predictions stored under ``keys``.

    PostgreSQL: one query, the keys as one array parameter, each probed through the unique
    index of (caller, task, key) (``LIMIT 1`` keeps the planner from turning the probes into
    a join). Not ``key IN ($1, ..., $1000)``: from its sixth run a prepared statement gets
    a generic plan, in which the list is no constant to hash nor an index condition, and
    every stored prediction of the task was compared with every key (0.75 s a thousand
    keys at 20,000 predictions, growing with the table). SQLite probes the index for each
    value of an ``IN`` list: lists of ``_LOOKUP_KEYS``."""
    owner = Prediction.caller_key_id == caller_id  # IS NULL for a call without a caller
    if dialect == "postgresql":
        wanted = func.unnest(bindparam("keys", keys, type_=ARRAY(String))
                             ).table_valued("key").render_derived()
        probe = (select(Prediction)
                 .where(owner, Prediction.task == task,
                        Prediction.idempotency_key == wanted.c.key)
                 .limit(1).lateral())
        return [select(aliased(Prediction, probe)).select_from(wanted).join(probe, true())]
    return [select(Prediction).where(owner, Prediction.task == task,
                                     col(Prediction.idempotency_key).in_(
                                         keys[start:start + _LOOKUP_KEYS]))
            for start in range(0, len(keys), _LOOKUP_KEYS)]


def _replay(existing: Prediction, raw: dict[str, Any], key: str) -> Prediction:
    if existing.input_hash != input_hash(raw):
        raise IdempotencyConflictError(key, existing.id)
    return existing
