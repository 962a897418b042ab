"""The one error tree of Arbiter. Domain errors know nothing of HTTP or GraphQL."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class ArbiterError(Exception):
    """Base of every expected failure; ``code`` is stable and part of the API."""

    code = "ARBITER_ERROR"

    def extensions(self) -> dict[str, Any]:
        return {}


class ConfigurationError(ArbiterError):
    """The settings or a task file are wrong; the message names the file and the field."""

    code = "CONFIGURATION_ERROR"


class UnknownTaskError(ArbiterError):
    code = "UNKNOWN_TASK"

    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__(
            f"unknown task {task!r}; known tasks: {', '.join(sorted(known)) or 'none'}"
        )
        self.task = task


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with one input field."""

    field: str
    problem: str  # MISSING, WRONG_TYPE, OUT_OF_RANGE, UNKNOWN_CATEGORY, UNKNOWN_FIELD, ...
    message: str
    index: int | None = None  # position in a batch


class InputValidationError(ArbiterError):
    """An input broke the task's feature contract; carries every problem found."""

    code = "INPUT_INVALID"

    def __init__(self, task: str, problems: list[FieldProblem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid input for task {task!r}: {first.message}{more}")
        self.problems = problems

    def extensions(self) -> dict[str, Any]:
        return {"fields": [asdict(p) for p in self.problems]}


class NoLiveReleaseError(ArbiterError):
    code = "NO_LIVE_RELEASE"

    def __init__(self, task: str) -> None:
        super().__init__(
            f"task {task!r} has no LIVE release; train one with `arbiter train {task}`"
        )


class ModelLoadError(ArbiterError):
    """An artifact is missing, tampered with (hash mismatch) or holds an untrusted type."""

    code = "MODEL_LOAD_FAILED"


class AllMembersFailedError(ArbiterError):
    code = "ALL_MEMBERS_FAILED"

    def __init__(self, task: str, errors: dict[str, str]) -> None:
        detail = "; ".join(f"{name}: {err}" for name, err in errors.items())
        super().__init__(f"every member of task {task!r} failed, nothing was stored: {detail}")
        self.errors = errors

    def extensions(self) -> dict[str, Any]:
        return {"members": self.errors}


class IdempotencyConflictError(ArbiterError):
    code = "IDEMPOTENCY_CONFLICT"

    def __init__(self, key: str, prediction_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used with a different input "
            f"(prediction {prediction_id}); use a new key for a new input"
        )
        self.prediction_id = prediction_id


class NotFoundError(ArbiterError):
    code = "NOT_FOUND"


class BadRequestError(ArbiterError):
    """A request argument is wrong (page size, cursor, batch size)."""

    code = "BAD_REQUEST"


class PermissionDeniedError(ArbiterError):
    code = "FORBIDDEN"


class AuthenticationError(ArbiterError):
    code = "UNAUTHENTICATED"


class TrainingError(ArbiterError):
    code = "TRAINING_FAILED"


class LeaseExpiredError(ArbiterError):
    """The lease ran out; the item went back to the queue and may be claimed again."""

    code = "LEASE_EXPIRED"


class StaleLeaseError(ArbiterError):
    """The token names no live lease: released, submitted, or expired and claimed again."""

    code = "LEASE_STALE"


class ReviewConflictError(ArbiterError):
    """The reviewer already reviewed this item (reviews are independent and counted once)."""

    code = "REVIEW_CONFLICT"


class StageChangeError(ArbiterError):
    """A stage change that cannot be made (unknown version, bad traffic percent, no-op,
    demoting the LIVE release, no previous LIVE release to roll back to)."""

    code = "STAGE_CHANGE_INVALID"


class StageConflictError(ArbiterError):
    """Another stage change of the same task committed first; read the stages and retry."""

    code = "STAGE_CONFLICT"


class NoDriftReferenceError(ArbiterError):
    """The LIVE release has nothing to measure drift against (no training snapshot)."""

    code = "NO_DRIFT_REFERENCE"


class ServiceUnavailableError(ArbiterError):
    """A dependency (the database) cannot be reached right now: retry after a moment."""

    code = "SERVICE_UNAVAILABLE"
    RETRY_AFTER_SECONDS = 2

    def __init__(self, what: str = "the database") -> None:
        super().__init__(f"{what} cannot be reached right now; retry in "
                         f"{self.RETRY_AFTER_SECONDS} s (a prediction retried with the same "
                         "idempotency key is stored once)")

    def extensions(self) -> dict[str, Any]:
        return {"retryAfter": self.RETRY_AFTER_SECONDS}


class EventsMissedError(ArbiterError):
    """Events published while this subscription was open never reached it: this server's
    listener lost Redis, or a publisher could not reach Redis and said so afterwards."""

    code = "EVENTS_MISSED"

    def __init__(self) -> None:
        super().__init__(
            "a connection to the event bus was lost while the subscription was open, so "
            "events may be missing; subscribe again and read what you missed with the "
            "matching query")


class SubscriberTooSlowError(ArbiterError):
    """A subscriber fell a whole buffer behind; its subscription ends instead of growing."""

    code = "SUBSCRIBER_TOO_SLOW"

    def __init__(self, dropped: int, buffer: int) -> None:
        super().__init__(
            f"this subscription fell {buffer} events behind and {dropped} events were dropped; "
            "subscribe again and read what you missed with the matching query")
        self.dropped = dropped
        self.buffer = buffer

    def extensions(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "buffer": self.buffer}


class QueryTooCostlyError(ArbiterError):
    """The operation would cost more than the caller's role may spend on one request."""

    code = "QUERY_TOO_COSTLY"

    def __init__(self, cost: int, budget: int) -> None:
        super().__init__(
            f"this operation would cost {cost} and the budget of one request is {budget}; "
            "ask for fewer items (first), fewer aliases or no explanations, and page through")
        self.cost = cost
        self.budget = budget

    def extensions(self) -> dict[str, Any]:
        return {"cost": self.cost, "budget": self.budget}


class RateLimitedError(ArbiterError):
    """The caller's key sent more requests than its role's rate allows."""

    code = "RATE_LIMITED"

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(
            f"this key exceeded its rate limit of {limit}; retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after

    def extensions(self) -> dict[str, Any]:
        return {"limit": self.limit, "retryAfter": self.retry_after}


class DeadlineExceededError(ArbiterError):
    """A query ran longer than its role's deadline and was stopped."""

    code = "DEADLINE_EXCEEDED"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"this query ran longer than its deadline of {seconds:g} s and was "
                         "stopped; ask for less (fewer items, fewer fields)")
        self.seconds = seconds


class ResponseTooLargeError(ArbiterError):
    """The answer would exceed the role's response-size cap."""

    code = "RESPONSE_TOO_LARGE"

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"the answer would be {size} bytes, over the cap of {cap}; ask for "
                         "fewer items or fields and page through")
        self.size = size
        self.cap = cap

    def extensions(self) -> dict[str, Any]:
        return {"bytes": self.size, "cap": self.cap}
