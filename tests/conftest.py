"""Shared fixtures: real databases (SQLite and PostgreSQL), real trained releases, a real
HTTP server. PostgreSQL tests skip locally when it is absent and fail when CI=true."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db.migrate import upgrade
from app.ml.task import TaskSpec, load_tasks
from app.ml.training import TrainedRelease, fit_release
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.databases import (
    StoredReleases,
    admin_sql,
    copy_sqlite,
    postgres_url,
    require_postgres,
)
from tests.support.processes import env, scaled  # noqa: F401  (fixtures of every test)
from tests.support.server import Api, LiveServer, make_key


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database of each backend; for a test that asks for ``settings``, a
    copy of the session's database where both example releases are stored."""
    stored: StoredReleases | None = (
        request.getfixturevalue("stored_releases") if "settings" in request.fixturenames
        else None)
    if request.param == "sqlite":
        path = tmp_path / "arbiter.db"
        url = f"sqlite+aiosqlite:///{path}"
        if stored:
            copy_sqlite(Path(stored.template("sqlite")[0]), path)
        else:
            upgrade(url)
        yield url
        return
    require_postgres()
    name = f"arbiter_test_{uuid.uuid4().hex[:12]}"
    if stored:
        admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{stored.template("postgresql")[0]}"')
    else:
        admin_sql(f'CREATE DATABASE "{name}"')
    url = postgres_url(name)
    try:
        if not stored:
            upgrade(url)
        yield url
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def example_tasks() -> dict[str, TaskSpec]:
    return load_tasks(EXAMPLE_TASKS_DIR)


@pytest.fixture(scope="session")
def trained(example_tasks: dict[str, TaskSpec]) -> dict[str, TrainedRelease]:
    """Both example tasks trained once per test session (pure: nothing stored)."""
    return {name: fit_release(task) for name, task in example_tasks.items()}


@pytest.fixture(scope="session")
def stored_releases(tmp_path_factory: pytest.TempPathFactory,
                    trained: dict[str, TrainedRelease]) -> Iterator[StoredReleases]:
    """Both example releases stored once per session and backend, to be copied per test."""
    stored = StoredReleases(tmp_path_factory.mktemp("stored"), trained)
    yield stored
    stored.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, stored_releases: StoredReleases) -> Settings:
    """Settings on a fresh database where both example tasks have a LIVE release (the
    database a copy made by ``database_url``, the artifacts copied here)."""
    s = Settings(data_dir=tmp_path / "data", database_url=database_url, release_refresh_seconds=0.0)
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    shutil.copytree(stored_releases.template(backend)[1], s.data_dir, dirs_exist_ok=True)
    return s


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def predictor(http: httpx.Client, settings: Settings) -> Api:
    return Api(http, make_key(settings, "predictor", "frontend"))


@pytest.fixture
def admin(http: httpx.Client, settings: Settings) -> Api:
    return Api(http, make_key(settings, "admin", "ops"))


# Modules whose tests start `arbiter` processes or train: pytest-xdist hands tests out in
# collection order, so these go first and neither worker is left alone with them at the end.
LONG_FIRST = ("tests/system/", "tests/faults/", "tests/workers/",
              "tests/app/audit/test_audit_cli.py",
              "tests/app/predictions/test_files.py", "tests/app/http/test_metrics.py",
              "tests/app/test_logs.py", "tests/review/test_concurrent_servers.py",
              "tests/graphql_schema/test_learning_loop.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first (a stable sort: the order within each part stays)."""
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_FIRST))
