"""What one request may use: the document limits (depth, tokens, aliases), and per request
``Governance``: the key's rate, the operation's cost against the budget (both before
anything runs), a query's deadline and the size of its answer. The limits are the caller's
role's (``Settings.limits_for``; docs/limits.md)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from graphql import ExecutionResult, GraphQLError
from strawberry import Schema
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.types.execution import ExecutionResult as StrawberryResult
from strawberry.types.graphql import OperationType

from app import json_codec
from app.errors import (
    ArbiterError,
    DeadlineExceededError,
    QueryTooCostlyError,
    RateLimitedError,
    ResponseTooLargeError,
)
from app.settings import RequestLimits, Settings
from graphql_schema.extensions.cost import ListMaxima, operation_cost
from graphql_schema.extensions.errors import DomainErrors, HideSuggestions
from graphql_schema.extensions.rates import KeyRates


@dataclass
class Governor:
    """The process's rate counters and each role's limits."""

    settings: Settings
    rates: KeyRates

    def limits_for(self, role: str) -> RequestLimits:
        return self.settings.limits_for(role)

    @property
    def maxima(self) -> ListMaxima:
        return ListMaxima(self.settings.page_size_max, self.settings.max_batch_size)


class Governance(SchemaExtension):
    """Refuses a request over its key's rate (RATE_LIMITED, HTTP 429 with Retry-After) or
    an operation over its cost budget (QUERY_TOO_COSTLY) before any resolver runs; arms a
    query's deadline (see ``deadline``); replaces a query's answer over the size cap."""

    def __init__(self, *, governor: Governor) -> None:
        self.governor = governor

    async def on_execute(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        if ctx.context.shared_stream:  # each socket sharing it was counted at its own start
            yield
            return
        principal = ctx.context.caller()
        limits = self.governor.limits_for(principal.role.value)
        refusal = await self._refusal(principal.key_id, limits)
        if refusal is not None:
            if ctx.operation_type is OperationType.SUBSCRIPTION:
                raise refusal
            ctx.result = _failed(refusal)
            if isinstance(refusal, RateLimitedError):
                _set_retry_after(ctx.context.response, refusal.retry_after)
            yield
            return
        query = ctx.operation_type is OperationType.QUERY
        timer = _arm_deadline(limits.deadline_seconds) if query else None
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
        if query:
            _cap_size(ctx.result, limits.max_response_bytes)

    async def _refusal(self, key_id: int, limits: RequestLimits) -> ArbiterError | None:
        ctx = self.execution_context
        try:
            await self.governor.rates.hit(key_id, limits.rate_limit)
        except RateLimitedError as error:
            return error
        if ctx.graphql_document is None:
            return None
        cost = operation_cost(cast(Schema, ctx.schema)._schema, ctx.graphql_document,
                              ctx.operation_name, ctx.variables, self.governor.maxima)
        if cost > limits.query_cost_budget:
            return QueryTooCostlyError(cost, limits.query_cost_budget)
        return None


def _failed(error: ArbiterError) -> ExecutionResult:
    # A result set before execution skips it, and is masked like any other.
    return ExecutionResult(data=None, errors=[GraphQLError(str(error), original_error=error)])


def _set_retry_after(response: Any, seconds: int) -> None:
    if response is not None:  # None on a websocket
        response.status_code = 429
        response.headers["Retry-After"] = str(seconds)


# Tasks their deadline cancelled, and the deadline: per task, not on the context, which a
# websocket's operations share (a subscription the client stops is cancelled too).
_EXPIRED: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()


def _arm_deadline(seconds: float) -> asyncio.TimerHandle:
    """Cancel the operation's task after ``seconds``; ``ArbiterSchema`` turns that
    cancellation (and only that one) into DEADLINE_EXCEEDED, over HTTP and websocket."""
    task = asyncio.current_task()
    assert task is not None

    def expire() -> None:
        _EXPIRED[task] = seconds
        task.cancel()

    return asyncio.get_running_loop().call_later(seconds, expire)


def past_deadline() -> Any:
    """The answer of a query whose deadline cancelled it; anything else cancelled it: the
    cancellation goes on."""
    task = asyncio.current_task()
    seconds = _EXPIRED.pop(task, None) if task is not None else None
    if seconds is None or task is None:
        raise asyncio.CancelledError
    task.uncancel()
    error = DeadlineExceededError(seconds)
    masked = DomainErrors().anonymise_error(GraphQLError(str(error), original_error=error))
    return StrawberryResult(data=None, errors=[masked])


def _cap_size(result: Any, cap: int) -> None:
    """Replace, in place (Strawberry answers with this object), data over ``cap`` bytes."""
    if result is None or result.data is None:
        return
    size = len(json_codec.dumps(result.data))
    if size > cap:
        error = ResponseTooLargeError(size, cap)
        result.data = None
        result.errors = [GraphQLError(str(error), original_error=error)]


def limit_extensions(settings: Settings,
                     rates: KeyRates | None = None) -> list[Callable[[], SchemaExtension]]:
    """Schema extension factories enforcing the settings' document and request limits
    (``rates``: the process's counters, which its owner closes; default: in this process)."""
    # The validation rules are built once: the validation cache is keyed by the rule
    # classes, and a class per request would never hit it.
    rules = [*QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules,
             *MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules]
    if not settings.introspection_enabled:
        rules += DisableIntrospection().validation_rules
    governor = Governor(settings, rates or KeyRates(settings.model_copy(
        update={"redis_url": None})))
    factories: list[Callable[[], SchemaExtension]] = [
        lambda: AddValidationRules(rules),
        lambda: MaxTokensLimiter(max_token_count=settings.max_query_tokens),
        lambda: Governance(governor=governor),
    ]
    if settings.production:
        factories.append(HideSuggestions)
    return factories
