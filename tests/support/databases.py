"""The PostgreSQL the suite creates its databases on: skipped locally when it is absent,
a failure under CI=true."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from app.db.engine import make_engine
from app.settings import Settings

PG_ADMIN_DSN = os.environ.get(
    "ARBITER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _pg_reachable() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


PG_PROBLEM = _pg_reachable()


def require_postgres() -> None:
    """Skip the test when PostgreSQL is absent locally; fail it under CI=true."""
    if PG_PROBLEM is None:
        return
    message = f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({PG_PROBLEM})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (.ci/run starts it)")
    pytest.skip(f"{message}; start it to run the PostgreSQL half of the suite")


def admin_sql(sql: str) -> None:
    """Run one statement on the admin database (CREATE/DROP DATABASE)."""
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def snapshot(settings: Settings) -> dict[str, list[str]]:
    """Every row of every table, as text."""
    async def work() -> dict[str, list[str]]:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                return {t: sorted(repr(tuple(r)) for r in
                                  await conn.execute(text(f'SELECT * FROM "{t}"')))
                        for t in sorted(SQLModel.metadata.tables)}
        finally:
            await engine.dispose()

    return dict(asyncio.run(work()))
