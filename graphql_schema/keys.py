"""API key management over GraphQL (admins): thin resolvers handing off to ``app.access.keys``."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.access import keys
from app.db.engine import read
from app.db.tables import ApiKey as ApiKeyRow
from graphql_schema.enums import Role
from graphql_schema.permissions import GUARDED, Info


@strawberry.type(description="An API key as stored: its name, role and first characters; "
                 "never the key itself.")
class ApiKey:
    id: strawberry.ID
    name: str
    role: Role
    prefix: str = strawberry.field(description="The key's first 10 characters, to tell it.")
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, k: ApiKeyRow) -> ApiKey:
        return cls(id=strawberry.ID(str(k.id)), name=k.name, role=Role(k.role), prefix=k.prefix,
                   created_at=k.created_at, revoked_at=k.revoked_at)


@strawberry.type(description="A new key; `secret` is shown this once and stored only hashed.")
class CreatedApiKey:
    key: ApiKey
    secret: str


@strawberry.type(description="The caller's own key.")
class Me:
    name: str
    role: Role


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
        return Me(name=p.name, role=p.role)


@strawberry.type
class KeyMutation:
    @strawberry.mutation(permission_classes=GUARDED,
                         description="Create a key for a role (PREDICTOR, REVIEWER, AUDITOR, "
                         "ADMIN); the secret is returned once.")
    async def create_api_key(self, info: Info, name: str, role: Role) -> CreatedApiKey:
        ctx = info.context
        row, secret = await keys.issue_key(ctx.services.sessions, role, name, ctx.caller().actor)
        return CreatedApiKey(key=ApiKey.from_row(row), secret=secret)

    @strawberry.mutation(permission_classes=GUARDED,
                         description="Revoke a key for good; servers refuse it within their "
                         "key cache time (ARBITER_KEY_CACHE_SECONDS).")
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> ApiKey:
        ctx = info.context
        return ApiKey.from_row(await keys.withdraw_key(ctx.services.sessions, id,
                                                       ctx.caller().actor))
