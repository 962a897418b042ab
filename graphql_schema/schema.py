"""The GraphQL schema: the root types composed of each domain's fields, with the error,
limit and permission extensions."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig

from app.settings import Settings
from graphql_schema.audit import AuditQuery
from graphql_schema.drift import DriftQuery
from graphql_schema.extensions import DomainErrors, code_document_errors, limit_extensions
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
class Query(ReviewQuery, ReleaseQuery, TrainingQuery, DriftQuery, AuditQuery, KeyQuery,
            TaskQuery, PredictionQuery):
    """Every domain's read fields."""


@strawberry.type
class Mutation(ReviewMutation, ReleaseMutation, TrainingMutation, KeyMutation,
               PredictionMutation):
    """Every domain's write fields."""


class ArbiterSchema(strawberry.Schema):
    """Strawberry's schema, where a document that does not parse or validate gets a code too
    (a parse error never reaches the extensions' view of the result, so it is done here)."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        code_document_errors(errors)
        super().process_errors(errors, execution_context)


def build_schema(settings: Settings | None = None) -> strawberry.Schema:
    """The schema with its permission checks and the settings' limits (defaults if None)."""
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
            *limit_extensions(settings),
            FieldRules,
            lambda: ParserCache(maxsize=QUERY_CACHE_SIZE),
            lambda: ValidationCache(maxsize=QUERY_CACHE_SIZE),
        ],
    )
