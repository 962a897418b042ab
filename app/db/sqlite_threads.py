"""SQLite connections that never keep the write lock after their caller has gone: the
connection class the engine opens (``RollbackOnClose``, below), and aiosqlite's connection
thread, made to outlive the event loop that called it.

aiosqlite runs each connection's statements in a thread of its own and hands every result
back with ``loop.call_soon_threadsafe``. When that loop has closed (a process's shutdown
cancelled a coroutine whose statement was still running, e.g. waiting for SQLite's write
lock), the hand-back raises ``RuntimeError: Event loop is closed`` and the thread dies
(aiosqlite issue #241). It dies before the close SQLAlchemy queued behind that statement
(a cancelled connection is closed, not reused), so the SQLite connection stays open, and a
statement that had just taken the write lock keeps it for the life of the process: every
other writer of the database fails "database is locked" after its busy timeout.

``install()`` puts in a thread function that does what aiosqlite 0.22's does, except that a
result nobody can receive any more is dropped and the thread goes on with its queue, so the
queued close runs and the lock is released. The pinned version is checked: another one
must be looked at again before this is trusted with it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import aiosqlite
from aiosqlite import core

log = logging.getLogger("arbiter.db")

SUPPORTED_VERSION = "0.22.1"


def _hand_back(future: asyncio.Future[Any] | None, deliver: Any, value: Any) -> None:
    if future is None:
        return
    try:
        future.get_loop().call_soon_threadsafe(deliver, future, value)
    except RuntimeError:  # its loop closed: nobody waits for this any more
        log.debug("dropped the result of a SQLite statement whose event loop had closed")


def _connection_worker_thread(tx: Any) -> None:
    """aiosqlite's ``_connection_worker_thread``, surviving a closed event loop."""
    while True:
        future, function = tx.get()
        try:
            result = function()
        except BaseException as e:  # handed to the caller, as aiosqlite does
            _hand_back(future, core.set_exception, e)
            continue
        _hand_back(future, core.set_result, result)
        if result is core._STOP_RUNNING_SENTINEL:
            break


def install() -> None:
    """Use the surviving thread function for every aiosqlite connection opened after."""
    if aiosqlite.__version__ != SUPPORTED_VERSION:
        raise RuntimeError(f"app.db.sqlite_threads replaces a function of aiosqlite "
                           f"{SUPPORTED_VERSION}, not {aiosqlite.__version__}: check "
                           "aiosqlite/core.py's _connection_worker_thread and update it")
    core._connection_worker_thread = _connection_worker_thread


class RollbackOnClose(sqlite3.Connection):
    """A SQLite connection whose close rolls its transaction back first. ``close()`` alone
    leaves a connection that a cursor still holds a statement of as a "zombie" that keeps
    its transaction, and with it the write lock, until that statement is finalized (the
    cursor garbage-collected, which may be never): every other writer then fails "database
    is locked". Seen when a shutdown closes a connection whose statement it cancelled."""

    def close(self) -> None:
        if self.in_transaction:
            try:
                self.rollback()
            except sqlite3.Error:  # closing anyway; SQLite rolls back what it can
                log.debug("rollback before close failed", exc_info=True)
        super().close()
