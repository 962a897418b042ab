"""Shared subscription streams on the websocket (graphql-transport-ws).

A subscription resolver serving a socket's operation hands it to ``serve``: the operation
joins the process's group (``app.events.multiplex``) of the same document, variables,
operation name and visibility (what the caller's key changes in the answer; the schema
says what that is). The group's one execution renders each result once, as Strawberry's
``Operation.send_next`` would, and every member socket sends the same text in a ``next``
message of its own, from a bounded queue of its own: a slow socket is cut off with
SUBSCRIBER_TOO_SLOW and never slows the others.

Two context variables carry what the resolvers cannot see otherwise: which operation of
which socket the resolver runs for (set by ``SharedStreamHandler`` in the operation's
task), and which group a shared stream's own execution serves (``listeners``)."""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, cast

from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types.execution import ExecutionResult
from strawberry.utils.aio import aclosing

from app import json_codec
from app.events.multiplex import Group, Groups
from app.predictions.services import Services


class StreamContext(Protocol):
    """What the shared streams need of a GraphQL context: the process's services."""

    services: Services


C = TypeVar("C", bound=StreamContext)


class SharedStreamHandler(BaseGraphQLTransportWSHandler[C, None]):
    """graphql-transport-ws whose subscriptions can be served from shared streams."""

    async def run_operation(self, operation: Operation[C, None]) -> None:
        """Strawberry's, telling the subscription resolvers (run in this task) which
        operation of which socket they serve, so that they can join a shared stream."""
        _serving.set((self, operation))
        await super().run_operation(operation)

    @property
    def groups(self) -> Groups:
        """The shared streams of this process's GraphQL app."""
        groups = _GROUPS.get(self.view)
        if groups is None:
            buffer = self.context.services.settings.subscription_buffer
            groups = _GROUPS[self.view] = Groups(buffer)
        return groups

    async def send_payload(self, operation_id: str, payload: str) -> None:
        """A ``next`` message around an already rendered payload (shared by many sockets)."""
        text = f'{{"id":{json_codec.dumps(operation_id)},"type":"next","payload":{payload}}}'
        try:
            await cast(ASGIWebSocketAdapter, self.websocket).ws.send_text(text)
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


_GROUPS: weakref.WeakKeyDictionary[Any, Groups] = weakref.WeakKeyDictionary()
# The socket operation a subscription resolver runs for (unset in a shared stream's task).
_serving: ContextVar[tuple[SharedStreamHandler[Any], Operation[Any, None]] | None] = (
    ContextVar("arbiter_ws_operation", default=None))
_producing: ContextVar[Group | None] = ContextVar("arbiter_shared_stream", default=None)


async def serve(schema: BaseSchema, visibility: Hashable, shared: object) -> bool:
    """Serve the socket operation this task runs from its group's shared stream until it
    ends (True), or return False when this task serves no socket operation (a shared
    stream's own execution: the resolver runs its feed). ``shared``: the context the
    stream executes with if this operation starts it; it must keep nothing of this socket,
    as the stream outlives it while others share it."""
    serving = _serving.get()
    if serving is None:
        return False
    handler, operation = serving
    # The standard library for the key: sorted keys make equal variables one key.
    key = (operation.query, json.dumps(operation.variables or {}, sort_keys=True, default=str),
           operation.operation_name, visibility)
    member = handler.groups.join(key, functools.partial(
        _produce, schema, shared, (operation.query, operation.variables,
                                   operation.operation_name)))
    try:
        while (payload := await member.take()) is not None:
            await handler.send_payload(operation.id, payload)
    finally:
        member.close()
    return True


def listeners() -> Callable[[], int] | None:
    """How many sockets the feed about to open serves: a shared stream's members (None
    outside a shared stream: one)."""
    group = _producing.get()
    return group.size if group is not None else None


def _render(result: Any) -> str:
    """A stream result as a ``next`` payload, as Strawberry's ``Operation.send_next``."""
    if not isinstance(result, ExecutionResult):
        raise TypeError(f"a subscription stream gave {type(result).__name__}")
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return json_codec.dumps(payload)  # text: the websocket sends it as a text frame


async def _produce(schema: BaseSchema, context: object,
                   operation: tuple[str, dict[str, object] | None, str | None],
                   group: Group) -> None:
    """The group's one execution: each result rendered once and handed to every member."""
    _serving.set(None)  # this task runs the feed itself
    _producing.set(group)
    query, variables, name = operation
    stream = await schema.stream(query, variable_values=variables, context_value=context,
                                 operation_name=name)
    async with aclosing(stream):
        async for result in stream:
            group.publish(_render(result))
