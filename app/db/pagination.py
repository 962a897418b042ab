"""Keyset pagination, newest first, over any table with ``created_at`` and a string ``id``."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, func, or_
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import BadRequestError

Row = TypeVar("Row", bound=SQLModel)


@dataclass
class Page(Generic[Row]):
    items: list[Row]
    cursors: list[str]
    has_next: bool
    total: int


def encode_cursor(row: Any) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, _, ident = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(stamp), ident
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequestError(f"invalid cursor {cursor!r}; pass an endCursor from a page") from None


def check_page_size(first: int, limit: int) -> None:
    if not 1 <= first <= limit:
        raise BadRequestError(f"first must be between 1 and {limit}, got {first}")


async def paginate(session: AsyncSession, model: type[Row], filters: list[Any], first: int,
                   after: str | None) -> Page[Row]:
    """One page of ``model`` rows matching ``filters``, newest first, after a cursor."""
    created, ident = col(model.created_at), col(model.id)  # type: ignore[attr-defined]
    page_filters = list(filters)
    if after:
        stamp, last = decode_cursor(after)
        page_filters.append(or_(created < stamp, and_(created == stamp, ident < last)))
    total = (await session.exec(select(func.count()).select_from(model).where(*filters))).one()
    rows = list((await session.exec(select(model).where(*page_filters)
                                    .order_by(created.desc(), ident.desc())
                                    .limit(first + 1))).all())
    return Page(rows[:first], [encode_cursor(r) for r in rows[:first]], len(rows) > first, total)
