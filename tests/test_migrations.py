"""Alembic migrations: they run both ways on both backends and match the table models."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from app.db import tables  # noqa: F401  (registers the tables)
from app.db.engine import make_engine
from app.db.migrate import alembic_config, upgrade


def _inspect(url: str, check: object) -> object:
    async def work() -> object:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(check)  # type: ignore[arg-type]
        finally:
            await engine.dispose()
    return asyncio.run(work())


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def test_migrations_match_the_models(database_url: str) -> None:
    assert _inspect(database_url, _diff) == []


def test_downgrade_and_upgrade_again(database_url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), "base")
    assert _inspect(database_url, _tables) == {"alembic_version"}
    upgrade(database_url)
    upgrade(database_url)  # idempotent at head
    assert {"predictions", "releases", "release_members", "api_keys", "stage_changes"} <= set(
        _inspect(database_url, _tables)  # type: ignore[call-overload]
    )
