"""A release held to review: once live AUTO quality broke the task's bound under
``on_bound_exceeded = "review_all"``, every prediction it makes goes to people, with the
reason ``BOUND_EXCEEDED``, until another release is promoted in its place."""

from __future__ import annotations

from typing import Any

from app.ml.routing import Reason, Route

BOUND_EXCEEDED = "BOUND_EXCEEDED"
REVIEW_ALL = "review_all"


def hold_of(alarm: dict[str, Any] | None) -> str | None:
    """Why a release's predictions all go to review (its stored alarm), or None."""
    if not alarm or alarm.get("action") != REVIEW_ALL:
        return None
    return str(alarm.get("reason") or "live AUTO error exceeded the task's bound")


def held(decided: list[tuple[Route, list[Reason]]], hold: str | None
         ) -> list[tuple[Route, list[Reason]]]:
    """The routing decisions of a batch, each sent to review with the hold's reason when
    the release is held (the other reasons kept, so the audit sample stays recognisable)."""
    if hold is None:
        return decided
    reason = Reason(BOUND_EXCEEDED, hold)
    return [(Route.REVIEW, [*reasons, reason]) for _, reasons in decided]
