"""Logging of a process: JSON lines off a terminal, human lines on one, and the context of
the work in hand (request id, task, release, prediction id) on every line.

The context lives in a contextvar: ``bind`` adds to it for the rest of the current request
(or task), and threads started with ``anyio.to_thread`` see it too. A filter on the one
handler copies it onto each record, so uvicorn's lines and every library's carry it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "text"]
CONTEXT_FIELDS = ("request_id", "task", "release", "prediction_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Loggers that come with their own handlers; ours replaces them so every line has one shape.
FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq")
PARAMETER_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy.engine")

_context: ContextVar[dict[str, Any]] = ContextVar("arbiter_log_context", default={})  # noqa: B039


def bind(**fields: Any) -> None:
    """Add fields to the log context of the current request or task."""
    _context.set({**_context.get(), **fields})


def start_context(**fields: Any) -> Token[dict[str, Any]]:
    """A fresh log context (a new request); hand the token to ``end_context``."""
    return _context.set(dict(fields))


def end_context(token: Token[dict[str, Any]]) -> None:
    """Back to the log context before ``start_context`` (the request is over)."""
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound context fields on each record (never overriding an explicit extra)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class AccessLineFilter(logging.Filter):
    """Drops the query string from uvicorn's access lines: a GraphQL GET carries the whole
    document there, literals (personal values) included."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) >= 3:
            path = str(args[2])
            if "?" in path:
                record.args = (*args[:2], path.split("?", 1)[0] + "?[query]", *args[3:])
        return True


class TextFormatter(logging.Formatter):
    """The human format, with the context fields appended as ``name=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n)]
        return f"{line} [{' '.join(fields)}]" if fields else line


def _formatter(log_format: LogFormat, stream: TextIO) -> logging.Formatter:
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    if log_format == "json":
        # ISO 8601 UTC time first, then level, logger, message, and every extra field.
        return JsonFormatter("%(levelname)s %(name)s %(message)s",
                             rename_fields={"levelname": "level"}, timestamp="time")
    return TextFormatter(TEXT_FORMAT)


def configure_logging(log_format: LogFormat, level: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger for the whole process (safe to call again)."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_formatter(log_format, stream))
    handler.addFilter(ContextFilter())
    handler.addFilter(AccessLineFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Their debug and info lines carry SQL parameters (inputs, personal values included).
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
