"""Announcing committed changes: the one way the core publishes what it changed.

An event tells of a change a subscriber can then read from the database, so it is
published only once that change has committed: call ``announce`` after the transaction,
never inside it (a rolled-back change must not be heard of).
"""

from __future__ import annotations

from collections.abc import Iterable

from app.events.bus import EventBus
from app.events.topics import Message


async def announce(bus: EventBus, messages: Iterable[Message]) -> None:
    """Publish the events of committed changes, ``(topic, event)`` pairs, in one go."""
    await bus.publish_many(list(messages))
