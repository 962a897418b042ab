"""The permission check every field of Query and Mutation carries (rules in app.roles)."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from app.errors import PermissionDeniedError
from app.roles import allowed
from graphql_schema.context import Info


class Allowed(BasePermission):
    """Refuses the operation unless the caller's role is in its rule."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        principal = info.context.caller()
        if not allowed(info.field_name, principal.role):
            raise PermissionDeniedError(
                f"role {principal.role.value} may not use {info.field_name}"
            )
        return True
