"""The GraphQL schema: thin resolvers handing off to ``app``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.permission import BasePermission
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig

from app.predictions import path as predictions
from app.predictions import preview, queries
from app.releases.store import list_releases, set_routing
from app.settings import Settings
from graphql_schema.audit import AuditQuery
from graphql_schema.context import Info
from graphql_schema.drift import DriftQuery
from graphql_schema.errors import DomainErrors, code_document_errors
from graphql_schema.keys import KeyMutation, KeyQuery
from graphql_schema.limits import limit_extensions
from graphql_schema.permissions import Allowed, FieldRules
from graphql_schema.releases import ReleaseMutation, ReleaseQuery
from graphql_schema.review import ReviewMutation, ReviewQuery
from graphql_schema.subscriptions import Subscription
from graphql_schema.training import TrainingMutation, TrainingQuery
from graphql_schema.types import (
    Me,
    Prediction,
    PredictionConnection,
    PredictionEdge,
    PredictionStatus,
    Release,
    Route,
    Task,
    relay_page_info,
)

GUARDED: list[type[BasePermission]] = [Allowed]
QUERY_CACHE_SIZE = 256


@strawberry.type
class Query(ReviewQuery, ReleaseQuery, TrainingQuery, DriftQuery, AuditQuery, KeyQuery):
    @strawberry.field(permission_classes=GUARDED, description="Every declared task.")
    def tasks(self, info: Info) -> list[Task]:
        return [Task.from_spec(t) for t in info.context.services.registry.tasks.values()]

    @strawberry.field(permission_classes=GUARDED, description="One task by name.")
    def task(self, info: Info, name: str) -> Task:
        return Task.from_spec(info.context.services.registry.task(name))

    @strawberry.field(permission_classes=GUARDED, description="The calling key's name and role.")
    def me(self, info: Info) -> Me:
        p = info.context.caller()
        return Me(name=p.name, role=p.role.value)

    @strawberry.field(permission_classes=GUARDED, description="A stored prediction by id.")
    async def prediction(self, info: Info, id: strawberry.ID) -> Prediction:
        ctx = info.context
        return Prediction.from_row(await queries.get_prediction(ctx.services, ctx.caller(), id))

    @strawberry.field(
        permission_classes=GUARDED,
        description="Stored predictions, newest first; predictors see their own. Filters "
        "combine: label is the model's, finalLabel the reviewers'; createdAfter (inclusive) "
        "and createdBefore (exclusive) bound createdAt.",
    )
    async def predictions(
        self,
        info: Info,
        task: str | None = None,
        route: Route | None = None,
        status: PredictionStatus | None = None,
        release: int | None = None,
        label: str | None = None,
        final_label: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> PredictionConnection:
        ctx = info.context
        page = await queries.list_predictions(
            ctx.services,
            ctx.caller(),
            task,
            route=route.value if route else None,
            status=status.value if status else None,
            release=release,
            label=label,
            final_label=final_label,
            created_after=created_after,
            created_before=created_before,
            first=first,
            after=after,
        )
        edges = [
            PredictionEdge(cursor=c, node=Prediction.from_row(p))
            for p, c in zip(page.items, page.cursors, strict=True)
        ]
        return PredictionConnection(
            edges=edges,
            total_count=page.total,
            page_info=relay_page_info(page, after),
        )

    @strawberry.field(
        permission_classes=GUARDED,
        description="What share of these inputs the LIVE release would route "
        "to review, and why; stores nothing.",
    )
    async def routing_preview(self, info: Info, task: str, inputs: list[JSON]) -> RoutingPreview:
        p = await preview.preview_routing(info.context.services, task, inputs)
        return RoutingPreview(
            total=p.total,
            routed=p.routed,
            share=p.routed / p.total,
            reasons=[
                ReasonCount(code=code, count=n, share=n / p.total, sole=p.sole_reasons.get(code, 0))
                for code, n in sorted(p.reasons.items(), key=lambda kv: -kv[1])
            ],
        )

    @strawberry.field(permission_classes=GUARDED, description="A task's releases, newest first.")
    async def releases(self, info: Info, task: str) -> list[Release]:
        services = info.context.services
        services.registry.task(task)
        async with services.sessions() as session:
            return [Release.from_row(r) for r in await list_releases(session, task)]


@strawberry.type(description="How many inputs one routing reason applied to.")
class ReasonCount:
    code: str
    count: int
    share: float
    sole: int = strawberry.field(description="Inputs routed by this reason alone.")


@strawberry.type(description="A dry run of routing over a set of inputs; nothing stored.")
class RoutingPreview:
    total: int
    routed: int
    share: float
    reasons: list[ReasonCount]


@strawberry.type
class Mutation(ReviewMutation, ReleaseMutation, TrainingMutation, KeyMutation):
    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Explain, route and store one prediction. entityKey (else "
        "idempotencyKey) keeps the caller on the same side of a canary.",
    )
    async def predict(
        self, info: Info, task: str, input: JSON, idempotency_key: str | None = None,
        entity_key: str | None = None,
    ) -> Prediction:
        ctx = info.context
        row = await predictions.predict(ctx.services, ctx.caller(), task, input, idempotency_key,
                                        entity_key)
        return Prediction.from_row(row)

    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Override review-policy fields for one release (confidence level, "
        "audit rate, reviews per item, ...); servers apply it within their refresh interval.",
    )
    async def set_release_routing(
        self, info: Info, task: str, version: int, policy: JSON
    ) -> Release:
        services = info.context.services
        spec = services.registry.task(task)
        async with services.sessions() as session, session.begin():
            return Release.from_row(await set_routing(session, spec, version, policy,
                                                      info.context.caller().actor))

    @strawberry.mutation(
        permission_classes=GUARDED,
        description="Many predictions, validated together, stored together; entityKeys "
        "(one per input) keep each entity on the same side of a canary; idempotencyKeys "
        "(one per input, null for none) make a retried batch answer the inputs it stored "
        "before with their stored predictions and store only the rest.",
    )
    async def predict_batch(self, info: Info, task: str, inputs: list[JSON],
                            entity_keys: list[str | None] | None = None,
                            idempotency_keys: list[str | None] | None = None,
                            ) -> list[Prediction]:
        ctx = info.context
        rows = await predictions.predict_batch(ctx.services, ctx.caller(), task, inputs,
                                               entity_keys, idempotency_keys=idempotency_keys)
        return [Prediction.from_row(r) for r in rows]


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
