"""Alembic migrations: they run both ways on both backends and match the table models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, update
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel, col

from app.db.engine import make_engine
from app.db.migrate import alembic_config, upgrade
from app.db.rows import values_of
from app.db.tables import Prediction
from app.main import build_services
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.settings import Settings
from tests.support.inputs import example_inputs


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


def test_repeated_keyless_keys_stop_the_upgrade_naming_them(
    settings: Settings, example_tasks: dict[str, TaskSpec],
) -> None:
    """Before 0007 two keyless predictions could share a key: the upgrade names them and
    changes nothing until they are sorted out."""
    from alembic import command

    url = settings.resolved_database_url
    inputs = example_inputs(example_tasks["loan_default"], 1)

    async def predict() -> Prediction:
        services, engine = build_services(settings)
        try:
            await services.registry.load_all()
            [p] = await predict_batch(services, None, "loan_default", inputs, actor="cli:t",
                                      idempotency_keys=["row-1"])
            return p
        finally:
            services.close()
            await engine.dispose()

    async def execute(statement: Any, *params: dict[str, Any]) -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(statement, list(params) or None)
        finally:
            await engine.dispose()

    p = asyncio.run(predict())
    command.downgrade(alembic_config(url), "0006")
    asyncio.run(execute(insert(Prediction), {**values_of(p), "id": "copy-1"}))
    with pytest.raises(RuntimeError, match=r"loan_default/'row-1' x2"):
        upgrade(url)

    asyncio.run(execute(update(Prediction).where(col(Prediction.id) == "copy-1")
                        .values(idempotency_key=None)))
    upgrade(url)
    assert _inspect(url, _diff) == []
