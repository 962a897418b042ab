"""``app.db.engine``: a snapshot reader (``arbiter audit verify``, while the sequencer moves
events into the tree) sees no later commit; a failed statement's error, which is logged,
never carries its parameters (inputs may hold personal values)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db.engine import make_engine, make_sessionmaker, snapshot


def test_a_snapshot_reader_does_not_see_a_later_commit(database_url: str) -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        engine = make_engine(database_url)
        sessions = make_sessionmaker(engine)
        try:
            async with engine.begin() as ddl:
                await ddl.execute(text("CREATE TABLE snap_probe (x INTEGER)"))
            counts: dict[str, list[int]] = {"plain": [], "snapshot": []}
            for mode in counts:
                async with sessions() as reader:
                    conn = await reader.connection()
                    if mode == "snapshot":
                        await snapshot(conn)
                    count = text("SELECT count(*) FROM snap_probe")
                    counts[mode].append((await conn.execute(count)).scalar_one())
                    async with engine.begin() as writer:
                        await writer.execute(text("INSERT INTO snap_probe VALUES (1)"))
                    counts[mode].append((await conn.execute(count)).scalar_one())
            return counts["plain"], counts["snapshot"]
        finally:
            await engine.dispose()

    plain, snapped = asyncio.run(scenario())
    assert plain == [0, 1]  # without a snapshot, the second read sees the insert
    assert snapped == [1, 1]


def test_a_failed_statement_does_not_show_its_parameters(database_url: str) -> None:
    marker = "PII-MARKER-4711"

    async def scenario() -> None:
        engine = make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE pii_probe (x TEXT PRIMARY KEY)"))
                await conn.execute(text("INSERT INTO pii_probe VALUES (:x)"), {"x": marker})
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO pii_probe VALUES (:x)"), {"x": marker})
        finally:
            await engine.dispose()

    with pytest.raises(IntegrityError) as raised:
        asyncio.run(scenario())
    assert marker not in str(raised.value) and "hidden" in str(raised.value)
