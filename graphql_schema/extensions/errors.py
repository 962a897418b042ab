"""The one place where errors become GraphQL errors, and what an error may tell a stranger
about the schema in production.

Domain errors (``ArbiterError``) keep their message and gain a stable ``extensions.code``;
documents that do not parse or validate keep graphql-core's message and gain a code too;
anything unexpected is logged with an id and the client receives only that id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension

from app.db.outage import database_unreachable
from app.errors import ArbiterError, ServiceUnavailableError

log = logging.getLogger("arbiter.graphql")


def _uncoded(error: GraphQLError) -> bool:
    return "code" not in (error.extensions or {})


def code_document_errors(errors: list[GraphQLError]) -> None:
    """Gives parse and validation errors (no original error) their code, in place."""
    for error in errors:
        if error.original_error is None and _uncoded(error):
            _document_error(error)


def _document_error(error: GraphQLError) -> GraphQLError:
    """Parse and validation errors carry no original error: they are the client's to read."""
    code = ("GRAPHQL_PARSE_FAILED" if error.message.startswith("Syntax Error")
            else "GRAPHQL_VALIDATION_FAILED")
    error.extensions = {**(error.extensions or {}), "code": code}
    return error


class DomainErrors(MaskErrors):
    """Maps domain errors to coded GraphQL errors and masks everything else. An operation
    that the database's absence left with no data at all answers HTTP 503 and
    ``Retry-After``: a client or proxy may retry it as it is."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_uncoded)

    def on_operation(self) -> Iterator[None]:
        yield from super().on_operation()
        _retry_later_if_unanswered(self.execution_context.result,
                                   getattr(self.execution_context.context, "response", None))

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if original is None:
            return _document_error(error)
        if not isinstance(original, ArbiterError) and database_unreachable(original):
            error_id = uuid.uuid4().hex[:12]
            log.warning("database unreachable (error %s) at %s: %r", error_id, error.path,
                        original)
            original = ServiceUnavailableError()
        if isinstance(original, ArbiterError):
            return GraphQLError(
                str(original),
                nodes=error.nodes,
                source=error.source,
                positions=error.positions,
                path=error.path,
                extensions={"code": original.code, **original.extensions()},
            )
        if isinstance(original, GraphQLError):  # raised on purpose with its own message
            return _document_error(error)
        error_id = uuid.uuid4().hex[:12]
        log.error("unexpected error %s at %s", error_id, error.path, exc_info=original)
        return GraphQLError(
            f"internal error (id {error_id}); the server log has the details",
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={"code": "INTERNAL_ERROR", "errorId": error_id},
        )


def _retry_later_if_unanswered(result: object, response: Any) -> None:
    """HTTP 503 + ``Retry-After`` when every error is SERVICE_UNAVAILABLE and no field has
    data (a partial answer stays 200: the client has something to read)."""
    errors = getattr(result, "errors", None) or []
    data = getattr(result, "data", None) or {}
    if (response is None or not errors or any(v is not None for v in data.values())
            or any((e.extensions or {}).get("code") != ServiceUnavailableError.code
                   for e in errors)):
        return
    response.status_code = 503
    response.headers["Retry-After"] = str(ServiceUnavailableError.RETRY_AFTER_SECONDS)


_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


class HideSuggestions(SchemaExtension):
    """Drops "Did you mean ...?" hints (field, argument, type and enum names) from errors,
    so a refused introspection is not undone by guessing names one error at a time."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        for error in getattr(result, "errors", None) or ():
            error.message = _SUGGESTION.sub("", error.message)
