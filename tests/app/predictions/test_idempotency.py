"""Looking idempotency keys up: a retried batch is answered with what its caller stored
under its keys, and nothing else, on both databases and however often the lookup runs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import String, case, func, insert, text, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import select

from app.access.roles import Principal, Role
from app.db.rows import table_of
from app.db.tables import ApiKey, Prediction
from app.errors import IdempotencyConflictError
from app.ml.task import TaskSpec
from app.predictions import idempotency
from app.predictions.idempotency import stored_answers
from app.predictions.inputs import Inputs
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import Settings
from tests.support.databases import POSTGRES_ONLY
from tests.support.inputs import example_inputs
from tests.support.server import make_key
from tests.support.services import run_with

TASK = "loan_default"
# More lookups than PostgreSQL plans for each prepared statement before it may switch to
# a generic plan (five).
LOOKUPS = 8


def lookup(task: TaskSpec, caller: Principal | None, rows: list[dict[str, Any]],
           keys: list[str | None]) -> Inputs:
    return Inputs(task, caller, rows, keys, keys, time.perf_counter())


def test_a_lookup_answers_the_callers_own_keys_and_no_others(
    settings: Settings, example_tasks: dict[str, TaskSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys stored by one caller, the same keys stored without a caller, and keys never
    stored, looked up together again and again: each caller gets exactly its own
    predictions back (SQLite: in several queries, as for a long batch)."""
    monkeypatch.setattr(idempotency, "_LOOKUP_KEYS", 3)
    task = example_tasks[TASK]
    rows = example_inputs(task, 10, seed=31)
    make_key(settings, "predictor", "shop")
    # The last key has what an array literal or an IN list would have to escape.
    keys = [*(f"order-{i}" for i in range(7)), 'a,"b" {c}\\\'d']

    async def work(services: Services) -> None:
        await services.registry.load_all()
        async with services.sessions() as session:
            key = (await session.exec(select(ApiKey).where(ApiKey.name == "shop"))).one()
        assert key.id is not None
        shop = Principal(key.id, "shop", Role.PREDICTOR)
        mine = await predict_batch(services, shop, TASK, rows[:8], idempotency_keys=keys)
        keyless = await predict_batch(services, None, TASK, rows[:3], actor="cli",
                                      idempotency_keys=keys[:3])
        asked: list[str | None] = [*keys, "order-new", None]
        for _ in range(LOOKUPS):
            found = await stored_answers(services.sessions, lookup(task, shop, rows, asked))
            assert [p.id if p else None for p in found] == [p.id for p in mine] + [None] * 2
            found = await stored_answers(services.sessions,
                                         lookup(task, None, rows[:4], asked[:4]))
            assert [p.id if p else None for p in found] == [p.id for p in keyless] + [None]
        with pytest.raises(IdempotencyConflictError):
            await stored_answers(services.sessions, lookup(task, shop, rows[1:2], keys[:1]))

    run_with(settings, work)


def _literal(value: Any) -> str:
    """A value as an SQL literal of unknown type (the prepared statement's casts type it)."""
    text = "{" + ",".join(value) + "}" if isinstance(value, list) else str(value)
    return "'" + text.replace("'", "''") + "'"


def _scans_of(plan: dict[str, Any], table: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") == table else []
    for child in plan.get("Plans", []):
        found += _scans_of(child, table)
    return found


async def _generic_plan_scans(conn: AsyncConnection, caller_id: int | None
                              ) -> list[dict[str, Any]]:
    """How the lookup's generic plan (a prepared statement's after a few runs) reads
    ``predictions``."""
    [query] = idempotency._lookups("postgresql", caller_id, TASK, ["order-1", "order-2"])
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    values = ", ".join(_literal(compiled.params[name]) for name in compiled.positiontup or [])
    driver: Any = (await conn.get_raw_connection()).driver_connection
    await driver.execute("SET plan_cache_mode = force_generic_plan")
    await driver.execute(f"PREPARE lookup AS {compiled.string}")
    try:
        explained = await driver.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE lookup({values})")
    finally:
        await driver.execute("DEALLOCATE lookup")
        await driver.execute("RESET plan_cache_mode")
    # SQLAlchemy's asyncpg connections decode JSON themselves.
    [plan] = json.loads(explained) if isinstance(explained, str) else explained
    return _scans_of(plan["Plan"], "predictions")


async def _clone_predictions(conn: AsyncConnection, copies: int, caller_id: int) -> None:
    """``copies`` more predictions like the stored one, under new keys, half of them by
    ``caller_id`` and half without a caller."""
    table = table_of(Prediction)
    n = func.generate_series(1, copies).table_valued("n").render_derived()
    made = {"id": func.gen_random_uuid().cast(String),
            "idempotency_key": func.concat("clone-", n.c.n),
            "caller_key_id": case((n.c.n % 2 == 0, caller_id), else_=None)}
    columns = [c.name for c in table.columns]
    await conn.execute(insert(table).from_select(columns, select(
        *[made.get(name, table.c[name]) for name in columns]).select_from(table).join(n, true())))


@POSTGRES_ONLY
def test_the_postgresql_lookup_finds_each_key_through_the_index_in_a_generic_plan(
    settings: Settings, example_tasks: dict[str, TaskSpec]
) -> None:
    """A prepared statement gets a generic plan after a few runs: the lookup's plan must
    find each key by an index condition then too, not by comparing every stored prediction
    of the task with the keys (which grows with the table: 0.75 s a thousand keys at
    20,000 predictions). So on a table of 20,000, before statistics are gathered (right
    after a bulk load) and after, for a caller and without one."""
    make_key(settings, "predictor", "shop")
    rows = example_inputs(example_tasks[TASK], 1, seed=32)

    async def work(services: Services) -> list[dict[str, Any]]:
        await services.registry.load_all()
        await predict_batch(services, None, TASK, rows, actor="cli",
                            idempotency_keys=["order-1"])
        async with services.sessions() as session:
            shop = (await session.exec(select(ApiKey.id).where(ApiKey.name == "shop"))).one()
            conn = await session.connection()
            assert shop is not None
            await _clone_predictions(conn, 20_000, shop)
            await session.commit()
        scans = []
        for analyzed in (False, True):
            async with services.sessions() as session:
                conn = await session.connection()
                if analyzed:
                    await conn.execute(text("ANALYZE predictions"))
                for caller in (None, shop):
                    scans += await _generic_plan_scans(conn, caller)
        return scans

    scans = run_with(settings, work)
    assert len(scans) == 4, scans
    for scan in scans:
        assert "idempotency_key" in scan.get("Index Cond", ""), scan
        assert "idempotency_key" not in scan.get("Filter", ""), scan
