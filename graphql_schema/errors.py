"""The one place where errors become GraphQL errors.

Domain errors (``ArbiterError``) keep their message and gain a stable ``extensions.code``;
documents that do not parse or validate keep graphql-core's message and gain a code too;
anything unexpected is logged with an id and the client receives only that id.
"""

from __future__ import annotations

import logging
import uuid

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from app.errors import ArbiterError

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
    """Maps domain errors to coded GraphQL errors and masks everything else."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_uncoded)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if original is None:
            return _document_error(error)
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
