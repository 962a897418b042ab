"""Shared streams: many subscribers of the same thing served by one producer.

Subscribers that asked for the same thing (the API layer decides what "the same" is, e.g.
one GraphQL document with the same variables and the same visibility) join one ``Group``
by key. The group's producer (one task per group) renders each event once and hands the
same rendered payload to every member; each member holds a bounded queue of its own
(``app.events.bounded_queue``, as a bus ``Subscription`` does), so a slow consumer never
slows the producer or the other members. A member that falls ``buffer`` payloads behind
gets ``SubscriberTooSlowError`` after the payloads it already has; when the producer
ends (its stream ended or failed, e.g. with ``EVENTS_MISSED``), every member gets what it
has queued, then the end. Touched only on the event loop the subscribers live on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from app.events.bounded_queue import BoundedQueue

log = logging.getLogger("arbiter.events")

Producer = Callable[["Group"], Coroutine[Any, Any, None]]


class Member(BoundedQueue[str]):
    """One subscriber of a group: a bounded queue of rendered payloads."""

    def __init__(self, group: Group, buffer: int) -> None:
        super().__init__(buffer)
        self.group = group

    def close(self) -> None:
        """Leave the group (its last member stops the producer)."""
        self.group.leave(self)


class Group:
    """The members sharing one producer."""

    def __init__(self, groups: Groups, key: Hashable) -> None:
        self.key = key
        self.members: set[Member] = set()
        self.ended = False
        self.task: asyncio.Task[None] | None = None
        self._groups = groups

    def size(self) -> int:
        """Members served (the bus counts them as its subscribers)."""
        return len(self.members)

    def publish(self, payload: str) -> None:
        """The same rendered payload to every member, in order; never blocks."""
        for member in self.members:
            member.offer(payload)

    def end(self) -> None:
        """The producer is done: members get what they have, then the end."""
        self.ended = True
        self._groups.forget(self)
        for member in self.members:
            member.end()

    def leave(self, member: Member) -> None:
        self.members.discard(member)
        if not self.members and not self.ended:
            self.ended = True  # nobody left to serve: stop producing
            self._groups.forget(self)
            if self.task is not None:
                self.task.cancel()


class Groups:
    """This process's groups by key."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._groups: dict[Hashable, Group] = {}

    def join(self, key: Hashable, producer: Producer, buffer: int | None = None) -> Member:
        """A member of the live group of ``key``; the first one starts ``producer(group)``
        as a task (which must call ``group.end()`` when its stream ends)."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(self, key)
            member = Member(group, buffer or self.buffer)
            group.members.add(member)
            group.task = asyncio.create_task(_produce(group, producer))
            return member
        member = Member(group, buffer or self.buffer)
        group.members.add(member)
        return member

    def forget(self, group: Group) -> None:
        if self._groups.get(group.key) is group:
            del self._groups[group.key]

    def __len__(self) -> int:
        return len(self._groups)


async def _produce(group: Group, producer: Producer) -> None:
    try:
        await producer(group)
    except asyncio.CancelledError:
        pass  # its last member left
    except Exception:  # the members must hear of the end either way
        log.exception("a shared subscription stream failed")
    finally:
        group.end()
