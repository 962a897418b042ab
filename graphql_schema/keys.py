"""API key management over GraphQL (admins): thin resolvers handing off to ``app.access.keys``."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.access import keys
from app.db.engine import read
from app.db.tables import ApiKey as ApiKeyRow
from graphql_schema.context import Info
from graphql_schema.permissions import GUARDED


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


@strawberry.type(description="The caller's own key.")
class Me:
    name: str
    role: str


@strawberry.type
class KeyQuery:
    @strawberry.field(permission_classes=GUARDED,
                      description="Every API key, revoked ones included, oldest first.")
    async def api_keys(self, info: Info) -> list[ApiKey]:
        return [ApiKey.from_row(k) for k in await read(info.context.services.sessions,
                                                        keys.list_keys)]

    @strawberry.field(permission_classes=GUARDED, description="The calling key's name and role.")
    def me(self, info: Info) -> Me:
        p = info.context.caller()
        return Me(name=p.name, role=p.role.value)


@strawberry.type
class KeyMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Create a key for a role (predictor, reviewer, auditor, "
                         "admin); the secret is returned once.")
    async def create_api_key(self, info: Info, name: str, role: str) -> CreatedApiKey:
        ctx = info.context
        row, secret = await keys.issue_key(ctx.services.sessions, role, name, ctx.caller().actor)
        return CreatedApiKey(key=ApiKey.from_row(row), secret=secret)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Revoke a key for good; servers refuse it within their "
                         "key cache time (ARBITER_KEY_CACHE_SECONDS).")
    async def revoke_api_key(self, info: Info, id: int) -> ApiKey:
        ctx = info.context
        return ApiKey.from_row(await keys.withdraw_key(ctx.services.sessions, id,
                                                       ctx.caller().actor))
