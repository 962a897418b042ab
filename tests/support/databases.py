"""The PostgreSQL the suite creates its databases on: skipped locally when it is absent,
a failure under CI=true."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.ml.training import TrainedRelease
from app.settings import Settings
from tests.support.releases import store_all

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


# Tables a server's audit sequencer writes on its own, every fraction of a second, for events
# committed earlier: they change between two snapshots whatever the request in between did.
SEQUENCED = ("audit_leaves", "audit_nodes", "audit_checkpoints", "audit_pending")


def snapshot(settings: Settings, without: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Every row of every table (but ``without``), as text."""
    async def work() -> dict[str, list[str]]:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                return {t: sorted(repr(tuple(r)) for r in
                                  await conn.execute(text(f'SELECT * FROM "{t}"')))
                        for t in sorted(SQLModel.metadata.tables) if t not in without}
        finally:
            await engine.dispose()

    return dict(asyncio.run(work()))


def postgres_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the admin DSN's server."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (the backup API, so WAL contents come along)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    dst.close()
    src.close()


class StoredReleases:
    """Per backend, one migrated database holding the example releases, with its data folder,
    stored once per session: the database and folder of each test that asks for ``settings``
    start as copies of them (storing both releases for every test took about a second)."""

    def __init__(self, folder: Path, trained: dict[str, TrainedRelease]) -> None:
        self.folder = folder
        self.trained = trained
        self.made: dict[str, tuple[str, Path]] = {}  # backend -> (file or database, data dir)

    def template(self, backend: str) -> tuple[str, Path]:
        """(SQLite file or PostgreSQL template database, data folder) of ``backend``."""
        if backend not in self.made:
            self.made[backend] = self._store(backend)
        return self.made[backend]

    def _store(self, backend: str) -> tuple[str, Path]:
        root = self.folder / backend
        root.mkdir()
        if backend == "sqlite":
            source = str(root / "arbiter.db")
            url = f"sqlite+aiosqlite:///{source}"
        else:
            source = f"arbiter_template_{uuid.uuid4().hex[:12]}"
            admin_sql(f'CREATE DATABASE "{source}"')
            url = postgres_url(source)
        upgrade(url)
        settings = Settings(data_dir=root / "data", database_url=url, release_refresh_seconds=0.0)
        settings.data_dir.mkdir()
        asyncio.run(store_all(settings, self.trained))
        return source, settings.data_dir

    def close(self) -> None:
        """Drop the PostgreSQL template, if one was made."""
        if "postgresql" in self.made:
            admin_sql(f'DROP DATABASE IF EXISTS "{self.made["postgresql"][0]}" WITH (FORCE)')
