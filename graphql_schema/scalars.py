"""Stored JSON documents passed into ``JSON`` fields."""

from __future__ import annotations

from typing import Any, cast

from strawberry.scalars import JSON


def as_json(value: Any) -> JSON:
    """Typed passage of a stored JSON document into a JSON field."""
    return cast(JSON, value)
