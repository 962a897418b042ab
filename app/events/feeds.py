"""What one subscriber sees: a topic's events, filtered for the caller, as they arrive.

Each feed holds one bounded ``Subscription`` of the bus for as long as it is iterated and
gives it back when the consumer stops (``aclose`` or cancellation)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from datetime import datetime
from typing import Any, Generic, TypeVar

from app.access.roles import Principal
from app.db.tables import Prediction
from app.events.bus import EventBus
from app.events.topics import Event, predictions_topic, releases_topic, review_topic

T = TypeVar("T")
RECENT_EVENTS = 1024


class Recent(Generic[T]):
    """The last ``size`` values made from events, by key: an event reaching hundreds of
    subscribers in one process is decoded once, not once per subscriber."""

    def __init__(self, make: Callable[[Any], T], size: int = RECENT_EVENTS) -> None:
        self.make = make
        self.size = size
        self._values: OrderedDict[Hashable, T] = OrderedDict()

    def get(self, key: Hashable, source: Any) -> T:
        if key not in self._values:
            self._values[key] = self.make(source)
            if len(self._values) > self.size:
                self._values.popitem(last=False)
        return self._values[key]


Listeners = Callable[[], int] | None  # a shared stream's member count (None: one)


async def _events(bus: EventBus, topic: str, listeners: Listeners) -> AsyncIterator[Event]:
    subscription = bus.subscribe([topic], listeners=listeners)
    try:
        async for event in subscription:
            yield event
    finally:
        subscription.close()


def prediction_from_event(event: Event) -> Prediction:
    """The stored row back from its JSON (``prediction_event``)."""
    fields: dict[str, Any] = dict(event)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return Prediction(**fields)


def sees_prediction(caller: Principal, event: Event, only_review: bool) -> bool:
    """Predictors follow their own predictions; auditors and admins everyone's."""
    if only_review and event["route"] != "REVIEW":
        return False
    return caller.reads_everything or event["caller_key_id"] == caller.key_id


_decoded = Recent(prediction_from_event)


async def prediction_feed(bus: EventBus, task: str, caller: Principal,
                          only_review: bool, listeners: Listeners = None
                          ) -> AsyncIterator[Prediction]:
    """Predictions of ``task`` as they are stored (only those routed to review if asked).
    Subscribers share the decoded row: treat it as read-only. ``listeners``: how many
    subscribers this feed serves (a shared stream's members), default one."""
    async for event in _events(bus, predictions_topic(task), listeners):
        if sees_prediction(caller, event, only_review):
            yield _decoded.get(event["id"], event)


def review_feed(bus: EventBus, task: str, listeners: Listeners = None) -> AsyncIterator[Event]:
    """Changes of ``task``'s review queue (``review_event`` dicts)."""
    return _events(bus, review_topic(task), listeners)


def release_feed(bus: EventBus, task: str, listeners: Listeners = None
                 ) -> AsyncIterator[Event]:
    """Release stage changes and training progress of ``task`` (``release_event`` dicts)."""
    return _events(bus, releases_topic(task), listeners)
