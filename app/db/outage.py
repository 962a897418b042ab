"""Telling "the database cannot be reached" from every other database failure.

A lost connection, a refused one, a backend terminated by an administrator, a pool that
gave no connection in time, a locked SQLite file: the request may succeed if retried a
moment later, so the API answers ``SERVICE_UNAVAILABLE`` (retryable), not
``INTERNAL_ERROR``. Anything else (a bad statement, a constraint) stays unexpected.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator

from asyncpg import exceptions as pg
from sqlalchemy import exc as sa

# What drivers raise when the server is gone or will not take the connection.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, broken pipe
    socket.gaierror,  # the database's host name does not resolve (not wrapped by the driver)
    pg.PostgresConnectionError,  # cannot connect, connection failure, rejection
    pg.ConnectionDoesNotExistError,  # the connection closed under a query
    pg.OperatorInterventionError,  # pg_terminate_backend, admin or crash shutdown
    pg.TooManyConnectionsError,
    sa.TimeoutError,  # the pool had no connection within its timeout
)
# asyncpg's words for a connection it already knows is gone (e.g. terminated while SQLAlchemy
# was still setting it up), the same test SQLAlchemy's dialect makes.
_PG_CLOSED = "connection is closed"
_SQLITE_BUSY = ("database is locked", "unable to open database file", "disk I/O error")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_unreachable(exc: BaseException) -> bool:
    """Did ``exc`` (or what caused it) come from the database being unreachable?"""
    for link in _chain(exc):
        if isinstance(link, sa.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, _UNREACHABLE):
            return True
        if isinstance(link, sqlite3.OperationalError) and str(link).startswith(_SQLITE_BUSY):
            return True
        if isinstance(link, pg.InterfaceError) and str(link).endswith(_PG_CLOSED):
            return True
    return False
