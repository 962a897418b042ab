"""PostgreSQL backends terminated again and again under the prediction path, in process:
every call either answers or fails as the database being away (a retryable
SERVICE_UNAVAILABLE), never with a driver error the outage left behind ("another
operation is in progress" from a rollback on a connection cut mid-COPY, a pooled connection
still inside a dead transaction). The cluster test in test_outages.py meets this about one
run in four; here hundreds of terminations hit single predictions (group commits) and
batches (COPY) in twenty seconds."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import traceback
import uuid
from typing import Any

import asyncpg
import pytest

from app.db.outage import database_unreachable
from app.main import build_services
from app.predictions.path import predict, predict_batch
from app.settings import Settings
from tests.support.databases import PG_ADMIN_DSN, POSTGRES_ONLY
from tests.support.inputs import example_inputs

pytestmark = [pytest.mark.faults, POSTGRES_ONLY]
TASK = "loan_default"
SECONDS = 20.0


def terminate_repeatedly(database: str, stop: threading.Event, waves: list[int]) -> None:
    """Every 50-300 ms, terminate every backend of ``database`` (from a thread and a
    connection of its own); ``waves`` gets how many each wave terminated."""
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            while not stop.is_set():
                await asyncio.sleep(random.uniform(0.05, 0.3))
                waves.append(await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database))
        finally:
            await conn.close()

    asyncio.run(run())


def test_every_failure_under_terminated_backends_is_an_outage(settings: Settings) -> None:
    database = settings.resolved_database_url.rsplit("/", 1)[1]
    outcomes = {"answered": 0, "outage": 0}
    other: dict[str, str] = {}  # first line -> traceback, of each kind of other failure

    async def call(services: Any, rows: list[dict[str, Any]], n: int) -> None:
        try:
            if n % 5 == 0:  # a batch: stored by COPY
                await predict_batch(services, None, TASK, rows[:20], actor="t",
                                    idempotency_keys=[uuid.uuid4().hex for _ in range(20)])
            else:  # single predictions: joined into group commits
                await predict(services, None, TASK, rows[n % len(rows)], uuid.uuid4().hex)
            outcomes["answered"] += 1
        except Exception as exc:
            if database_unreachable(exc):
                outcomes["outage"] += 1
            else:
                other.setdefault(repr(exc)[:300], "".join(traceback.format_exception(exc)))

    async def main() -> list[int]:
        services, engine = build_services(settings)
        rows = example_inputs(services.registry.tasks[TASK], 40)
        stop, waves = threading.Event(), []
        killer = threading.Thread(target=terminate_repeatedly, args=(database, stop, waves))
        killer.start()
        try:
            n, end = 0, time.monotonic() + SECONDS
            while time.monotonic() < end:
                await asyncio.gather(*(call(services, rows, n + k) for k in range(16)))
                n += 16
        finally:
            stop.set()
            killer.join()
            await services.drain()
            await engine.dispose()
        return waves

    waves = asyncio.run(main())
    assert not other, "\n\n".join(other.values())
    assert sum(waves) > 0 and outcomes["outage"] > 0, (waves, outcomes)  # faults did land
    assert outcomes["answered"] > 0, outcomes  # and calls between them succeeded
