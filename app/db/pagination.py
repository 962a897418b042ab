"""Keyset pagination, newest first, over any table with ``created_at`` and a string ``id``;
and the one cursor codec every paginated list uses."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, func, or_
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import BadRequestError

Row = TypeVar("Row", bound=SQLModel)
Key = TypeVar("Key")


@dataclass
class Page(Generic[Row]):
    """One page of rows, each with the cursor that resumes after it."""

    items: list[Row]
    cursors: list[str]
    has_next: bool
    total: int


def encode_cursor(key: str) -> str:
    """An opaque cursor holding ``key`` (the position a list resumes after)."""
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_cursor(cursor: str, parse: Callable[[str], Key], hint: str = "from a page") -> Key:
    """The position ``cursor`` holds, read by ``parse`` (which raises ValueError when it is
    not one); BadRequestError for anything that is not a cursor of this list."""
    try:
        return parse(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequestError(f"invalid cursor {cursor!r}; pass an endCursor {hint}") from None


def _keyset_of(row: Any) -> str:
    return f"{row.created_at.isoformat()}|{row.id}"


def _keyset(key: str) -> tuple[datetime, str]:
    stamp, _, ident = key.partition("|")
    return datetime.fromisoformat(stamp), ident


def check_page_size(first: int, limit: int) -> None:
    if not 1 <= first <= limit:
        raise BadRequestError(f"first must be between 1 and {limit}, got {first}")


async def paginate(session: AsyncSession, model: type[Row], filters: list[Any], first: int,
                   after: str | None) -> Page[Row]:
    """One page of ``model`` rows matching ``filters``, newest first, after a cursor."""
    created, ident = col(model.created_at), col(model.id)  # type: ignore[attr-defined]
    page_filters = list(filters)
    if after:
        stamp, last = decode_cursor(after, _keyset)
        page_filters.append(or_(created < stamp, and_(created == stamp, ident < last)))
    total = (await session.exec(select(func.count()).select_from(model).where(*filters))).one()
    rows = list((await session.exec(select(model).where(*page_filters)
                                    .order_by(created.desc(), ident.desc())
                                    .limit(first + 1))).all())
    cursors = [encode_cursor(_keyset_of(r)) for r in rows[:first]]
    return Page(rows[:first], cursors, len(rows) > first, total)
