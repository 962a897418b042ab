"""Who calls and what they may do: the per-request ``Context`` resolvers receive, and the
permission checks (rules in app.access.roles): ``Allowed`` on every root field, and
``FieldRules``, a schema extension that checks every selected field of every type."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    BREAK,
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    get_operation_ast,
    parse,
    visit,
)
from strawberry import Schema
from strawberry.extensions import SchemaExtension
from strawberry.permission import BasePermission
from strawberry.types import Info as _Info
from strawberry.types.graphql import OperationType

from app.access.roles import ROOT_TYPES, Principal, Role, allowed, field_allowed
from app.errors import AuthenticationError, PermissionDeniedError
from app.http.authn import Verify
from app.predictions.services import Services


@dataclass
class Context:
    """Services built once per process, and the caller of this request."""

    services: Services
    principal: Principal | None
    verify: Verify  # websockets check their key again before each ping
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None  # a websocket's connection_init payload
    deadline_expired: float | None = None  # the deadline (s) that stopped this query
    # A subscription stream shared by sockets whose own starts were each checked already.
    shared_stream: bool = False

    def caller(self) -> Principal:
        if self.principal is None:
            raise AuthenticationError(
                "missing or invalid API key; send Authorization: Bearer <key>"
            )
        return self.principal


Info = _Info[Context, None]


class Allowed(BasePermission):
    """Refuses the operation unless the caller's role is in its rule."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = info.context.caller()
        if not allowed(info.field_name, principal.role):
            raise PermissionDeniedError(
                f"role {principal.role.value} may not use {info.field_name}"
            )
        return True


GUARDED: list[type[BasePermission]] = [Allowed]  # every root field's check


class _FirstRefused(Visitor):
    def __init__(self, type_info: TypeInfo, role: Role) -> None:
        super().__init__()
        self.type_info = type_info
        self.role = role
        self.refused: tuple[str, str] | None = None

    def enter_field(self, node: FieldNode, *_: Any) -> Any:
        parent = self.type_info.get_parent_type()
        name = node.name.value
        # Unknown parents failed validation already; introspection is the schema, not data.
        if parent is None or name.startswith("__") or parent.name.startswith("__"):
            return None
        if not field_allowed(parent.name, name, self.role):
            self.refused = (parent.name, name)
            return BREAK
        return None


def refused_field(
    schema: GraphQLSchema, document: DocumentNode, operation_name: str | None, role: Role
) -> tuple[str, str] | None:
    """The first (type, field) of the operation (and the fragments it may spread) that
    ``role`` may not select, or None."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None
    fragments = [d for d in document.definitions if isinstance(d, FragmentDefinitionNode)]
    for node in (operation, *fragments):
        type_info = TypeInfo(schema)
        finder = _FirstRefused(type_info, role)
        visit(node, TypeInfoVisitor(type_info, finder))
        if finder.refused:
            return finder.refused
    return None


@functools.lru_cache(maxsize=1024)
def _refused_in_query(
    schema: GraphQLSchema, query: str, operation_name: str | None, role: Role
) -> tuple[str, str] | None:
    """``refused_field`` per query text: clients send the same few documents again and
    again, and the walk cost about 1 % of a prediction. Parsed again on a miss only."""
    return refused_field(schema, parse(query), operation_name, role)


class FieldRules(SchemaExtension):
    """Before anything runs, refuses an operation that selects a field the caller's role
    may not read, naming it; so no resolver can forget a check and nothing half-runs."""

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if document is not None:
            role = ctx.context.caller().role
            schema = cast(Schema, ctx.schema)._schema
            refused = (
                refused_field(schema, document, ctx.operation_name, role)
                if ctx.query is None
                else _refused_in_query(schema, ctx.query, ctx.operation_name, role)
            )
            if refused is not None:
                type_name, field = refused
                what = field if type_name in ROOT_TYPES else f"{type_name}.{field}"
                verb = "use" if type_name in ROOT_TYPES else "read"
                error = PermissionDeniedError(f"role {role.value} may not {verb} {what}")
                if ctx.operation_type is OperationType.SUBSCRIPTION:
                    raise error  # Strawberry turns it into the stream's one result
                # A result set here skips execution and is still masked like any other.
                ctx.result = ExecutionResult(
                    data=None, errors=[GraphQLError(str(error), original_error=error)]
                )
        yield
