"""The application's PostgreSQL role (`arbiter app-role`): the app works under it, and it
can neither change the log's rows nor switch their triggers off."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.db.engine import make_engine
from app.db.roles import app_role_sql
from app.ml.task import TaskSpec
from app.predictions.path import predict_batch
from app.predictions.services import Services
from app.settings import Settings
from tests.support.databases import POSTGRES_ONLY, admin_sql
from tests.support.inputs import example_inputs
from tests.support.services import run_with
from tests.support.tampering import verified

REFUSED = [
    "UPDATE audit_events SET actor = 'x'",
    "DELETE FROM audit_leaves",
    "TRUNCATE audit_checkpoints",
    "DELETE FROM audit_nodes",
    "ALTER TABLE audit_events DISABLE TRIGGER USER",
    "UPDATE alembic_version SET version_num = '0001'",
]


def run_sql(url: str, statements: list[str]) -> None:
    async def work() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                for s in statements:
                    await conn.execute(text(s))
        finally:
            await engine.dispose()
    asyncio.run(work())


@POSTGRES_ONLY
def test_the_app_role_works_and_cannot_rewrite_the_log(
        settings: Settings, example_tasks: dict[str, TaskSpec]) -> None:
    role = f"arbiter_app_{uuid.uuid4().hex[:8]}"
    owner_url = settings.resolved_database_url
    run_sql(owner_url, app_role_sql(role))
    as_app = settings.model_copy(update={"database_url": owner_url.replace(
        "postgres@", f"{role}@", 1)})
    try:
        async def work(services: Services) -> None:
            await services.registry.load_all()
            task = example_tasks["loan_default"]
            await predict_batch(services, None, task.name, example_inputs(task, 30, seed=1))

        run_with(as_app, work)
        check = verified(as_app)  # the sequencer and verify run as the app too
        assert check.ok and check.leaves > 30, check.problems
        for statement in REFUSED:
            with pytest.raises(DBAPIError) as refused:
                run_sql(as_app.resolved_database_url, [statement])
            assert ("permission denied" in str(refused.value)
                    or "must be owner" in str(refused.value)), statement
    finally:
        name = owner_url.rsplit("/", 1)[1]
        run_sql(owner_url, [f"DROP OWNED BY {role}"])
        admin_sql(f'REVOKE ALL ON DATABASE "{name}" FROM {role}')
        admin_sql(f"DROP ROLE IF EXISTS {role}")
