"""API key management over GraphQL (admins): thin resolvers handing off to ``app.access.keys``."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.permission import BasePermission

from app.access import keys
from app.db.tables import ApiKey as ApiKeyRow
from graphql_schema.context import Info
from graphql_schema.permissions import Allowed

GUARDED: list[type[BasePermission]] = [Allowed]


@strawberry.type(description="An API key as stored: its name, role and first characters; "
                 "never the key itself.")
class ApiKey:
    id: int
    name: str
    role: str
    prefix: str = strawberry.field(description="The key's first 10 characters, to tell it.")
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, k: ApiKeyRow) -> ApiKey:
        return cls(id=k.id or 0, name=k.name, role=k.role, prefix=k.prefix,
                   created_at=k.created_at, revoked_at=k.revoked_at)


@strawberry.type(description="A new key; `secret` is shown this once and stored only hashed.")
class CreatedApiKey:
    key: ApiKey
    secret: str


@strawberry.type
class KeyQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="Every API key, revoked ones included, oldest first.")
    async def api_keys(self, info: Info) -> list[ApiKey]:
        async with info.context.services.sessions() as session:
            return [ApiKey.from_row(k) for k in await keys.list_keys(session)]


@strawberry.type
class KeyMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Create a key for a role (predictor, reviewer, auditor, "
                         "admin); the secret is returned once.")
    async def create_api_key(self, info: Info, name: str, role: str) -> CreatedApiKey:
        actor = info.context.caller().actor
        async with info.context.services.sessions() as session, session.begin():
            row, secret = await keys.create_key(session, role, name, actor)
        return CreatedApiKey(key=ApiKey.from_row(row), secret=secret)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Revoke a key for good; servers refuse it within their "
                         "key cache time (ARBITER_KEY_CACHE_SECONDS).")
    async def revoke_api_key(self, info: Info, id: int) -> ApiKey:
        actor = info.context.caller().actor
        async with info.context.services.sessions() as session, session.begin():
            return ApiKey.from_row(await keys.revoke_key(session, id, actor))
