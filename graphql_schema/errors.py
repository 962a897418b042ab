"""The one place where errors become GraphQL errors.

Domain errors (``ArbiterError``) keep their message and gain a stable ``extensions.code``;
anything unexpected is logged with an id and the client receives only that id.
"""

from __future__ import annotations

import logging
import uuid

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from app.errors import ArbiterError

log = logging.getLogger("arbiter.graphql")


def _is_ours(error: GraphQLError) -> bool:
    # Parse and validation errors carry no original error: they are the client's to read.
    return error.original_error is not None


class DomainErrors(MaskErrors):
    """Maps domain errors to coded GraphQL errors and masks everything else."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=_is_ours)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, ArbiterError):
            return GraphQLError(
                str(original),
                nodes=error.nodes,
                source=error.source,
                positions=error.positions,
                path=error.path,
                extensions={"code": original.code, **original.extensions()},
            )
        if isinstance(original, GraphQLError):  # raised on purpose with its own extensions
            return error
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
