"""The schema's extensions besides the permission checks: the one place where errors become
GraphQL errors, what one document may cost (depth, tokens, aliases), and what an error may
tell a stranger about the schema in production.

Domain errors (``ArbiterError``) keep their message and gain a stable ``extensions.code``;
documents that do not parse or validate keep graphql-core's message and gain a code too;
anything unexpected is logged with an id and the client receives only that id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator

from graphql.error import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from app.errors import ArbiterError
from app.settings import Settings

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


_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


class HideSuggestions(SchemaExtension):
    """Drops "Did you mean ...?" hints (field, argument, type and enum names) from errors,
    so a refused introspection is not undone by guessing names one error at a time."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        for error in getattr(result, "errors", None) or ():
            error.message = _SUGGESTION.sub("", error.message)


def limit_extensions(settings: Settings) -> list[Callable[[], SchemaExtension]]:
    """Schema extension factories enforcing the settings' document limits."""
    # The validation rules are built once: the validation cache is keyed by the rule
    # classes, and a class per request would never hit it.
    rules = [*QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
             *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules]
    if not settings.introspection_enabled:
        rules += DisableIntrospection().validation_rules
    factories: list[Callable[[], SchemaExtension]] = [
        lambda: AddValidationRules(rules),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
    ]
    if settings.production:
        factories.append(HideSuggestions)
    return factories
