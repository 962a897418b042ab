"""Where a prediction stands: answered by the models, waiting for people, or settled by them."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a prediction stands."""

    ACCEPTED = "ACCEPTED"
    PENDING_REVIEW = "PENDING_REVIEW"
    REVIEWED = "REVIEWED"
