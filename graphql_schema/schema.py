"""The GraphQL schema: the root types composed of each domain's fields, with the error,
limit and permission extensions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types.execution import ExecutionResult as StrawberryResult

from app.http.graphql_requests import nul_problem
from app.settings import Settings
from graphql_schema.audit import AuditQuery
from graphql_schema.drift import DriftQuery, QualityMutation, QualityQuery
from graphql_schema.extensions.errors import DomainErrors, code_document_errors
from graphql_schema.extensions.limits import limit_extensions, past_deadline
from graphql_schema.extensions.rates import KeyRates
from graphql_schema.keys import KeyMutation, KeyQuery
from graphql_schema.permissions import FieldRules
from graphql_schema.predictions import PredictionMutation, PredictionQuery
from graphql_schema.releases import (
    ReleaseMutation,
    ReleaseQuery,
    TrainingMutation,
    TrainingQuery,
)
from graphql_schema.review import ReviewMutation, ReviewQuery
from graphql_schema.subscriptions import Subscription
from graphql_schema.tasks import TaskQuery

QUERY_CACHE_SIZE = 256


@strawberry.type
class Query(ReviewQuery, ReleaseQuery, TrainingQuery, DriftQuery, QualityQuery, AuditQuery,
            KeyQuery, TaskQuery, PredictionQuery):
    """Every domain's read fields."""


@strawberry.type
class Mutation(ReviewMutation, ReleaseMutation, TrainingMutation, KeyMutation,
               PredictionMutation, QualityMutation):
    """Every domain's write fields."""


class ArbiterSchema(strawberry.Schema):
    """Strawberry's schema, where a document that does not parse or validate gets a code too
    (a parse error never reaches the extensions' view of the result, so it is done here)."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Code document errors; log nothing here. Strawberry would log every error with
        the document's source around it (its literals: personal values) and a traceback;
        expected errors are the caller's to read, and ``DomainErrors`` logs unexpected ones
        with an id and without the document."""
        code_document_errors(errors)

    async def execute(self, query: str | None, variable_values: dict[str, Any] | None = None,
                      context_value: Any | None = None, *args: Any, **kwargs: Any) -> Any:
        """Strawberry's, where a query stopped at its deadline answers DEADLINE_EXCEEDED."""
        try:
            return await super().execute(query, variable_values, context_value, *args, **kwargs)
        except asyncio.CancelledError:
            return past_deadline()

    async def stream(self, query: str | None, variable_values: dict[str, Any] | None = None,
                     *args: Any, **kwargs: Any) -> Any:
        """Strawberry's (a websocket's operations), where a NUL character is refused as over
        HTTP, and a query stopped at its deadline ends with DEADLINE_EXCEEDED instead of
        ending without an answer."""
        problem = nul_problem(query, variable_values, kwargs.get("operation_name"))
        if problem is not None:
            return _refused(problem)
        return _answered_at_deadline(await super().stream(query, variable_values, *args,
                                                          **kwargs))


async def _refused(problem: str) -> AsyncGenerator[Any, None]:
    yield StrawberryResult(data=None, errors=[
        GraphQLError(problem, extensions={"code": "BAD_REQUEST"})])


async def _answered_at_deadline(results: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    try:
        async for result in results:
            yield result
    except asyncio.CancelledError:
        yield past_deadline()
    finally:
        await results.aclose()


def build_schema(settings: Settings | None = None,
                 rates: KeyRates | None = None) -> strawberry.Schema:
    """The schema with its permission checks and the settings' limits (defaults if None),
    counting each key's rate with ``rates`` (default: in this process)."""
    settings = settings or Settings.model_construct()
    return ArbiterSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(disable_field_suggestions=settings.production),
        # Factories: a fresh extension per request; the parse/validation LRU caches are module
        # level in Strawberry, so they are shared across requests all the same.
        extensions=[
            DomainErrors,
            *limit_extensions(settings, rates),
            FieldRules,
            lambda: ParserCache(maxsize=QUERY_CACHE_SIZE),
            lambda: ValidationCache(maxsize=QUERY_CACHE_SIZE),
        ],
    )
