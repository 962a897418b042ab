"""``database_unreachable``: what the drivers raise when the database is gone is told apart
from every other failure (those stay INTERNAL_ERROR, not a retryable 503)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import text

from app.db.engine import make_engine
from app.db.outage import database_unreachable


def _connect_error(url: str) -> BaseException:
    async def connect() -> None:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
    with pytest.raises(Exception) as raised:
        asyncio.run(connect())
    return raised.value


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://postgres@no-such-host.invalid:5432/test",  # the name does not resolve
    "postgresql+asyncpg://postgres@127.0.0.1:1/test",  # nothing listens
])
def test_a_database_that_cannot_be_reached_is_unreachable(url: str) -> None:
    assert database_unreachable(_connect_error(url))


def test_other_failures_are_not_outages() -> None:
    assert not database_unreachable(ValueError("bad input"))
    assert not database_unreachable(FileNotFoundError("artifact.skops"))
    assert not database_unreachable(sqlite3.OperationalError("no such table: predictions"))
    assert database_unreachable(sqlite3.OperationalError("database is locked"))
