"""The one JSON spelling of everything the log hashes, and of its times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# One encoder for every call: ``json.dumps`` with options builds a new one each time (2 µs
# of 7, three times per prediction). Its output is the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False, default=str)


def canonical(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no spaces, UTF-8, no NaN."""
    return _CANONICAL.encode(value)


def stamp(at: datetime) -> str:
    """A time in ISO 8601, UTC, with microseconds."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")
