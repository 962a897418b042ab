"""A throwaway PostgreSQL database for a benchmark run, dropped at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg


def admin_dsn(parser: argparse.ArgumentParser, value: str | None) -> str | None:
    """``--database-url``: 'postgresql' (the local server) or an admin DSN."""
    if value == "postgresql":
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    if value and not value.startswith("postgresql://"):
        parser.error("--database-url must be 'postgresql' or postgresql://user@host:port/db")
    return value


async def admin_sql(dsn: str, sql: str) -> None:
    """Run one statement as the administrator (CREATE or DROP DATABASE)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_database(admin_dsn: str, template: str | None = None) -> Iterator[str]:
    """A fresh database (its SQLAlchemy async URL; a copy of ``template`` when given),
    dropped on exit."""
    name = f"arbiter_bench_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(admin_sql(admin_dsn, f'CREATE DATABASE "{name}"{copy}'))
    try:
        base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin_sql(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
