"""Bulk INSERTs for the batch path: many rows of one table in one statement, as prepared
tuples, without SQLAlchemy's per-row parameter handling.

PostgreSQL: ``COPY`` (asyncpg's ``copy_records_to_table``, binary), in the caller's
transaction; a statement trigger (the audit log's pending marks) fires once for the lot
instead of once per row. SQLite: one ``executemany`` of positional tuples. Each value goes
through its column type's own bind processor (JSON text, UTC times, booleans), so the rows
stored are exactly those SQLAlchemy's ``insert(table)`` with dictionaries stores; the tests
compare both (``GENERIC`` switches to that path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import asyncpg
from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_

Processor = Callable[[Any], Any] | None


# True: store through SQLAlchemy's generic ``insert`` instead (the reference path the tests
# and bench/batch_store.py compare the bulk one with).
GENERIC = False
_LAYOUTS: WeakKeyDictionary[Dialect, dict[str, list[tuple[str, Processor]]]] = \
    WeakKeyDictionary()


def _layout(table: Table, dialect: Dialect) -> list[tuple[str, Processor]]:
    """Every column of ``table`` in order, with its bind processor on ``dialect`` (once per
    dialect and table)."""
    known = _LAYOUTS.setdefault(dialect, {})
    if table.name not in known:
        known[table.name] = [(c.name, c.type._cached_bind_processor(dialect))
                             for c in table.columns]
    return known[table.name]


def prepared(table: Table, dialect: Dialect, rows: Sequence[Mapping[str, Any]]
             ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns the rows give (those of the first row, in the table's order) and each
    row as a tuple of bound values. Every row gives the same columns: a row without one is
    a ValueError naming it (a bulk INSERT has one column list)."""
    given = rows[0].keys()
    columns = [(name, proc) for name, proc in _layout(table, dialect) if name in given]
    unknown = set(given) - {name for name, _ in columns}
    if unknown:
        raise ValueError(f"{table.name} has no column {sorted(unknown)}")
    names = [name for name, _ in columns]
    try:
        tuples = [tuple(row[name] if proc is None else proc(row[name])
                        for name, proc in columns) for row in rows]
    except KeyError as exc:
        raise ValueError(f"every row of a bulk INSERT into {table.name} gives the same "
                         f"columns; one has no {exc.args[0]!r}") from None
    return names, tuples


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT ``rows`` (column values, as for ``insert(table)``) in ``conn``'s transaction:
    all of them, or an error and none (the transaction is the caller's). Runs in
    SQLAlchemy's greenlet (a sync listener, or ``AsyncConnection.run_sync``)."""
    if not rows:
        return
    if GENERIC:
        conn.execute(insert(table), list(rows))
        return
    names, tuples = prepared(table, conn.dialect, rows)
    if conn.dialect.name == "postgresql":
        _copy(conn, table, names, tuples)
        return
    quote = conn.dialect.identifier_preparer.quote
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join('?' * len(names))})", tuples)


def _copy(conn: Connection, table: Table, names: list[str], tuples: list[tuple[Any, ...]]
          ) -> None:
    """``COPY table (names) FROM STDIN`` (binary) on the session's asyncpg connection; a
    driver error comes out as SQLAlchemy's (a unique key: ``IntegrityError``), as from
    ``execute``. A COPY cut off by anything but an error the server reported (the
    connection lost or terminated mid-stream) leaves asyncpg's protocol mid-operation:
    the connection is invalidated, so that the transaction's rollback does not run on it
    (it would fail with "another operation is in progress" and hide the outage) and the
    pool does not hand it out again."""
    adapted: Any = conn.connection.dbapi_connection
    driver: Any = conn.connection.driver_connection
    # SQLAlchemy's asyncpg adapter opens the database transaction at its first statement,
    # not at begin(): a COPY sent first would run (and commit) on its own.
    conn.exec_driver_sql("SELECT 1")
    try:
        await_(_copy_until_lost(driver, table.name, names, tuples))
    except Exception as exc:
        broken = _leaves_connection_broken(exc, driver)
        try:
            adapted._handle_exception(exc)  # raises the adapted DBAPI error
        except Exception as translated:
            if broken:
                conn.invalidate(translated)
            raise DBAPIError.instance(f"COPY {table.name}", None, translated,
                                      conn.dialect.loaded_dbapi.Error,
                                      connection_invalidated=broken) from translated
        raise


async def _copy_until_lost(driver: Any, table: str, names: list[str],
                           tuples: list[tuple[Any, ...]]) -> None:
    """asyncpg's COPY, stopped when its connection is lost. asyncpg (0.32) waits for the
    socket to take more data without a timeout, and a connection lost while the socket was
    full never wakes that wait: a terminated backend would hang the COPY, and with it
    every commit queued behind it, for ever."""
    copying = asyncio.ensure_future(
        driver.copy_records_to_table(table, records=tuples, columns=names))

    def lost(_: object) -> None:
        copying.cancel()

    driver.add_termination_listener(lost)
    try:
        await copying
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if (task is not None and task.cancelling()) or not driver.is_closed():
            raise  # cancelled by our own caller
        raise asyncpg.ConnectionDoesNotExistError(
            f"connection was closed in the middle of COPY {table}") from None
    finally:
        driver.remove_termination_listener(lost)


def _leaves_connection_broken(exc: BaseException, driver: Any) -> bool:
    """After a failed COPY, is the connection unusable? Yes unless the server reported an
    error about the data (a unique key, a bad value): then it answered and is idle again."""
    if driver.is_closed():
        return True
    return not isinstance(exc, asyncpg.PostgresError) or isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError)
