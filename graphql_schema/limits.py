"""What one GraphQL document may cost (depth, tokens, aliases) and what an error may tell
a stranger about the schema in production."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from app.settings import Settings

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
