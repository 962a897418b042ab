"""The async engine and session factory, configured per backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from app import json_codec
from app.db import sqlite_threads

sqlite_threads.install()  # before any SQLite connection: see that module

SQLITE_BUSY_TIMEOUT_MS = 30_000
Params = ParamSpec("Params")
Result = TypeVar("Result")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; busy_timeout makes writers wait, not fail.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# JSON columns are encoded and decoded with orjson (see app.json_codec). A statement's
# parameters (inputs, which may hold personal values) are never put in its error's text,
# which is logged.
_OPTIONS = {"json_serializer": json_codec.dumps, "json_deserializer": json_codec.loads,
         "hide_parameters": True}


# Connections whose close releases their lock even when a cursor outlives them.
_SQLITE_ARGS = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                "factory": sqlite_threads.RollbackOnClose}


def make_engine(url: str, pooled: bool = True) -> AsyncEngine:
    """``pooled=False`` opens a connection per session: for rare users (jobs) whose event
    loop may stop before anyone could dispose of a pool."""
    if not pooled:
        engine = create_async_engine(url, poolclass=NullPool, **_OPTIONS,
                                     connect_args=_SQLITE_ARGS if url.startswith("sqlite")
                                     else {})
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args=_SQLITE_ARGS, **_OPTIONS)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, **_OPTIONS)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


class SessionsPerLoop:
    """A session factory per event loop: asyncpg connections belong to the loop that opened
    them, and Dramatiq runs async actors on a loop thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._made: dict[asyncio.AbstractEventLoop, tuple[AsyncEngine, Any]] = {}

    def __call__(self) -> async_sessionmaker[AsyncSession]:
        loop = asyncio.get_running_loop()
        if loop not in self._made:
            engine = make_engine(self.url, pooled=False)
            self._made[loop] = (engine, make_sessionmaker(engine))
        sessions: async_sessionmaker[AsyncSession] = self._made[loop][1]
        return sessions


async def snapshot(conn: AsyncConnection) -> None:
    """Make the rest of ``conn``'s transaction read one snapshot of the database: repeatable
    read on PostgreSQL; on SQLite an explicit ``BEGIN`` (the driver begins a transaction only
    before a write, so without it every SELECT sees the latest commit)."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    else:
        await conn.exec_driver_sql("BEGIN")


async def read(
    sessions: async_sessionmaker[AsyncSession],
    query: Callable[Concatenate[AsyncSession, Params], Awaitable[Result]],
    *args: Params.args, **kwargs: Params.kwargs,
) -> Result:
    """Run one read-only ``query`` (a function of a session) in a session of its own: the
    entry point of every read that needs no transaction."""
    async with sessions() as session:
        return await query(session, *args, **kwargs)
