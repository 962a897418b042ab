"""A SQLite statement that ends after its event loop closed (a shutdown cancelled the
coroutine waiting for it) must not leave SQLite's write lock held: aiosqlite's thread
died handing the result back ("Event loop is closed") before it ran the close queued
behind the statement, and every later writer failed "database is locked"."""

from __future__ import annotations

import asyncio
import gc
import re
import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from app.db import (
    engine,
    sqlite_threads,
)


def test_a_statement_ending_after_its_loop_closed_still_lets_its_connection_close(
        tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (x TEXT)")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock

    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def wait_for_the_lock() -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path, timeout=30, isolation_level=None)
        waiting = asyncio.ensure_future(conn.execute("BEGIN IMMEDIATE"))  # waits in its thread
        await asyncio.sleep(0.2)
        started.set()
        waiting.cancel()  # the shutdown cancels the coroutine waiting for the statement
        conn.stop()  # and closes its connection (SQLAlchemy's terminate), queued behind it
        return conn

    conn = loop.run_until_complete(wait_for_the_lock())
    assert started.is_set()
    loop.close()  # the process's loop is gone while the statement still waits

    died: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda a: died.append(a.exc_value)
    try:
        holder.execute("COMMIT")  # the waiting BEGIN IMMEDIATE now takes the lock
        conn._thread.join(timeout=30)  # the thread ends once it has run the queued close
        assert not conn._thread.is_alive(), "the connection's thread never ran its close"
    finally:
        threading.excepthook = hook
        holder.close()
    assert died == [], f"aiosqlite's thread died: {died}"

    after = sqlite3.connect(path, timeout=2)  # a writer that does not wait long
    try:
        after.execute("INSERT INTO t VALUES ('after')")
        after.commit()
    finally:
        after.close()


def test_another_aiosqlite_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiosqlite, "__version__", "0.23.0")
    with pytest.raises(RuntimeError, match=re.escape("0.22.1, not 0.23.0")):
        sqlite_threads.install()



def test_a_connection_closed_while_a_cursor_holds_a_statement_releases_its_lock(
        tmp_path: Path) -> None:
    """``sqlite3.Connection.close`` with a statement still open becomes a zombie that keeps
    its transaction and the write lock (seen in CI: a test server's connection, closed by
    its shutdown, held the lock for the rest of the process)."""
    path = tmp_path / "zombie.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    for factory, frees in ((sqlite3.Connection, False), (sqlite_threads.RollbackOnClose, True)):
        conn = sqlite3.connect(path, factory=factory)
        conn.execute("INSERT INTO t VALUES (-1)")  # the write lock, in a transaction
        open_cursor = conn.execute("SELECT x FROM t")
        assert open_cursor.fetchone() is not None  # its statement is still running
        conn.close()
        after = sqlite3.connect(path, timeout=0.5)
        try:
            after.execute("INSERT INTO t VALUES (100)")
            after.commit()
            freed = True
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            freed = False
        finally:
            after.close()
        assert freed is frees, factory
        del open_cursor  # the plain connection's zombie goes with its statement
        gc.collect()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM t WHERE x = -1").fetchone() == (0,)


def test_the_engine_opens_sqlite_connections_that_roll_back_on_close(tmp_path: Path) -> None:
    async def kind() -> type:
        made = engine.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'kind.sqlite'}")
        try:
            async with made.connect() as conn:
                raw = await conn.get_raw_connection()
                return type(raw.driver_connection._connection)  # type: ignore[union-attr]
        finally:
            await made.dispose()
    assert asyncio.run(kind()) is sqlite_threads.RollbackOnClose
