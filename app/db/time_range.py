"""Half-open time ranges (``start <= at < end``) as callers give them and as query filters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.errors import BadRequestError


def check_time_range(start: datetime | None, end: datetime | None,
                     names: tuple[str, str] = ("since", "until")) -> None:
    """Refuse ends without a time zone, or a start not before the end (``names``: how the
    caller spells the two ends)."""
    for name, value in zip(names, (start, end), strict=True):
        if value is not None and value.tzinfo is None:
            raise BadRequestError(f"{name} needs a time zone (e.g. 2026-01-31T12:00:00Z), "
                                  f"got {value.isoformat()}")
    if start is not None and end is not None and start >= end:
        raise BadRequestError(f"{names[0]} ({start.isoformat()}) must be before "
                              f"{names[1]} ({end.isoformat()})")


def time_range_filters(column: Any, start: datetime | None, end: datetime | None,
                       names: tuple[str, str] = ("since", "until")) -> list[Any]:
    """The checked range as filters on ``column``; an open end adds none."""
    check_time_range(start, end, names)
    filters: list[Any] = []
    if start is not None:
        filters.append(column >= start)
    if end is not None:
        filters.append(column < end)
    return filters
