"""Bulk INSERTs (app.db.bulk: COPY on PostgreSQL, executemany of tuples on SQLite) store
exactly what SQLAlchemy's generic ``insert`` stores, all or nothing, on both databases."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from app.audit import log as audit
from app.db import bulk
from app.db.engine import make_engine
from app.db.outage import database_unreachable
from app.db.rows import table_of
from app.db.tables import AuditEvent, Prediction, ReviewItem
from app.ml.task import TaskSpec
from app.predictions import store
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import Settings
from tests.support.databases import PG_ADMIN_DSN, POSTGRES_ONLY
from tests.support.inputs import example_inputs
from tests.support.services import run_with
from tests.support.tampering import verified

TASK = "loan_default"
Inserted = list[tuple[str, list[dict[str, Any]]]]  # (table, rows) of each insert_rows call


def spy(monkeypatch: pytest.MonkeyPatch) -> Inserted:
    """Record the rows every bulk INSERT of the prediction path is given."""
    seen: Inserted = []

    def recorded(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        seen.append((table.name, [dict(r) for r in rows]))
        bulk.insert_rows(conn, table, rows)

    monkeypatch.setattr(store, "insert_rows", recorded)
    monkeypatch.setattr(audit, "insert_rows", recorded)
    return seen


def renamed(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """The same row under other unique values (ids, keys, hash), to store it again."""
    out = dict(row)
    if table == "audit_events":
        out["id"] = row["id"] + 1_000_000
        out["hash"] = "f" + row["hash"][1:] if row["hash"][0] != "f" else "e" + row["hash"][1:]
        return out
    out["id"] = "x" + row["id"][1:]
    if table == "predictions":
        out["idempotency_key"] = f"again:{row['idempotency_key']}"
    else:
        out["prediction_id"] = "x" + row["prediction_id"][1:]
    return out


def stored(conn: Connection, table: str, ids: list[Any]) -> dict[Any, dict[str, Any]]:
    t = table_of({"predictions": Prediction, "review_items": ReviewItem,
                  "audit_events": AuditEvent}[table])
    return {r.id: dict(r._mapping) for r in conn.execute(select(t).where(t.c.id.in_(ids)))}


def test_a_batch_stored_in_bulk_reads_back_as_the_generic_insert_stores_it(
        settings: Settings, example_tasks: dict[str, TaskSpec],
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy(monkeypatch)
    # PostgreSQL writes a commit's few events by one INSERT (audit.INSERT_MAX_EVENTS): these
    # 60 go the bulk way, the one this test is about.
    monkeypatch.setattr(audit, "INSERT_MAX_EVENTS", 0)
    rows = example_inputs(example_tasks[TASK], 60)
    keys = [f"bulk-{i}" for i in range(len(rows))]

    async def work(services: Services) -> list[Any]:
        return list(await predict_batch(services, None, TASK, rows, actor="test",
                                        idempotency_keys=keys))

    answered = run_with(settings, work)
    tables = [name for name, _ in seen]
    assert tables == ["predictions", "review_items", "audit_events"]
    given = dict(seen)
    assert len(given["predictions"]) == len(given["audit_events"]) == 60
    assert 0 < len(given["review_items"]) == sum(p.route == "REVIEW" for p in answered)
    assert verified(settings).ok  # sequenced, checkpointed and verified

    # The same values again under other ids, through SQLAlchemy's generic INSERT: every
    # column reads back the same as what the bulk path stored.
    engine = make_engine(settings.resolved_database_url)

    async def compare() -> None:
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: check_same(c, given))
        finally:
            await engine.dispose()

    def check_same(conn: Connection, given: dict[str, list[dict[str, Any]]]) -> None:
        monkeypatch.setattr(bulk, "GENERIC", True)
        for table in ("predictions", "review_items", "audit_events"):
            again = [renamed(table, r) for r in given[table]]
            bulk.insert_rows(conn, table_of({"predictions": Prediction,
                                             "review_items": ReviewItem,
                                             "audit_events": AuditEvent}[table]), again)
            first = stored(conn, table, [r["id"] for r in given[table]])
            second = stored(conn, table, [r["id"] for r in again])
            assert len(first) == len(second) == len(given[table])
            for original, copy in zip(given[table], again, strict=True):
                back = second[copy["id"]]
                expected = first[original["id"]]
                differing = {k for k in back if back[k] != expected[k]}
                assert differing == {k for k in copy if copy[k] != original[k]}, table
        raise Rollback  # leave the log as the application wrote it

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        asyncio.run(compare())
    assert verified(settings).ok


def test_a_bulk_insert_that_breaks_a_unique_key_stores_nothing(settings: Settings) -> None:
    rows = stored_predictions(settings)
    engine = make_engine(settings.resolved_database_url)
    predictions = table_of(Prediction)

    async def work() -> tuple[Exception | None, int]:
        refused: Exception | None = None
        try:
            async with engine.begin() as conn:
                fresh = [{**rows[0], "id": "fresh", "idempotency_key": "fresh"}]
                await conn.run_sync(bulk.insert_rows, predictions, fresh)
                # the same idempotency keys under new ids: the unique key refuses them
                again = [{**r, "id": f"y{r['id'][1:]}"} for r in rows]
                await conn.run_sync(bulk.insert_rows, predictions, again)
        except IntegrityError as exc:
            refused = exc
        async with engine.connect() as conn:
            count = len((await conn.execute(select(predictions.c.id))).all())
        await engine.dispose()
        return refused, count

    refused, count = asyncio.run(work())
    assert isinstance(refused, IntegrityError)
    assert "uq_predictions_idempotency" in str(refused) or "UNIQUE" in str(refused)
    assert count == len(rows)  # neither the fresh row nor the copies: the whole transaction


def stored_predictions(settings: Settings) -> list[dict[str, Any]]:
    """Column values of the only predictions in the database, three made under keys."""
    async def work(services: Services) -> list[dict[str, Any]]:
        await predict_batch(services, None, TASK,
                            example_inputs(services.registry.tasks[TASK], 3), actor="t",
                            idempotency_keys=["k1", "k2", "k3"])
        async with services.sessions() as session:
            conn = await session.connection()
            found = await conn.execute(select(table_of(Prediction)))
            return [dict(r._mapping) for r in found]

    rows: list[dict[str, Any]] = run_with(settings, work)
    assert [r["idempotency_key"] for r in sorted(rows, key=lambda r: r["idempotency_key"])] \
        == ["k1", "k2", "k3"]
    return rows


def test_every_row_gives_the_same_columns() -> None:
    with pytest.raises(ValueError, match="one has no 'label'"):
        bulk.prepared(table_of(Prediction), sqlite.dialect(),
                      [{"id": "a", "label": "x"}, {"id": "b"}])
    with pytest.raises(ValueError, match=r"predictions has no column \['nope'\]"):
        bulk.prepared(table_of(Prediction), sqlite.dialect(), [{"id": "a", "nope": 1}])


@POSTGRES_ONLY
def test_a_backend_terminated_mid_copy_is_an_outage_and_leaves_no_other_error(
        settings: Settings) -> None:
    """A COPY cut off by ``pg_terminate_backend`` comes out as the database being gone
    (a retryable SERVICE_UNAVAILABLE), and the transaction's rollback on the dead connection
    does not replace it with a driver error ("another operation is in progress")."""
    row = stored_predictions(settings)[0]
    rows = [{**row, "id": f"copy{n}", "idempotency_key": f"copy{n}"} for n in range(20_000)]
    engine = make_engine(settings.resolved_database_url)
    predictions = table_of(Prediction)

    async def work() -> tuple[BaseException | None, bool]:
        killed = threading.Event()
        try:
            async with engine.begin() as conn:
                pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
                killer = threading.Thread(target=terminate_in_copy, args=(pid, killed))
                killer.start()
                try:
                    await conn.run_sync(bulk.insert_rows, predictions, rows)
                finally:
                    killer.join()
        except Exception as exc:
            return exc, killed.is_set()
        finally:
            await engine.dispose()
        return None, killed.is_set()

    failed, killed = asyncio.run(work())
    assert killed, "the COPY ended before it could be terminated: the test proved nothing"
    assert failed is not None and database_unreachable(failed), repr(failed)


def terminate_in_copy(pid: int, killed: threading.Event) -> None:
    """Terminate backend ``pid`` as soon as it is running a COPY (polled from a connection
    of this thread's own)."""
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            for _ in range(2_000):
                if await conn.fetchval(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid = $1 AND query LIKE 'COPY%' AND state = 'active'", pid):
                    killed.set()
                    return
                await asyncio.sleep(0.002)
        finally:
            await conn.close()

    asyncio.run(run())


@POSTGRES_ONLY
def test_a_copy_cancelled_midway_leaves_no_connection_mid_operation(
        settings: Settings) -> None:
    """A COPY cancelled mid-stream (a shutdown) stores nothing, is cancelled (not another
    error), and the pool's next connection works: the cut-off one was not handed out again
    (SQLAlchemy terminates a connection whose operation a cancellation interrupted; a COPY
    cut off by an error is ours to invalidate, see the test above)."""
    row = stored_predictions(settings)[0]
    rows = [{**row, "id": f"cut{n}", "idempotency_key": f"cut{n}"} for n in range(20_000)]
    engine = make_engine(settings.resolved_database_url)
    predictions = table_of(Prediction)

    async def copy() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(bulk.insert_rows, predictions, rows)

    async def work() -> tuple[BaseException | None, int]:
        try:
            copying = asyncio.ensure_future(copy())
            while not await copy_running(settings):
                await asyncio.sleep(0.005)
            copying.cancel()
            outcome = (await asyncio.gather(copying, return_exceptions=True))[0]
            async with engine.connect() as conn:  # the pool's one connection, if it kept it
                stored = (await conn.exec_driver_sql(
                    "SELECT count(*) FROM predictions WHERE id LIKE 'cut%'")).scalar_one()
            return outcome, stored
        finally:
            await engine.dispose()

    outcome, stored = asyncio.run(work())
    assert isinstance(outcome, asyncio.CancelledError), repr(outcome)
    assert stored == 0


async def copy_running(settings: Settings) -> bool:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
            "AND query LIKE 'COPY%' AND state = 'active'",
            settings.resolved_database_url.rsplit("/", 1)[1]))
    finally:
        await conn.close()
