"""A call's validated inputs, and what travels with them through the prediction path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.access.roles import Principal
from app.ml.task import TaskSpec

ANONYMOUS = "system:anonymous"  # who acts in the audit log for a call without a caller

_SORTED = json.JSONEncoder(sort_keys=True)  # json.dumps(sort_keys=True), without a new encoder


def input_hash(raw: dict[str, Any]) -> str:
    """SHA-256 of the input as ``json.dumps(raw, sort_keys=True)`` spells it (stored hashes
    depend on that spelling: keep it)."""
    return hashlib.sha256(_SORTED.encode(raw).encode()).hexdigest()


@dataclass(frozen=True)
class Inputs:
    """Validated rows of one call, who sent them, and the keys each row comes with."""

    task: TaskSpec
    caller: Principal | None
    rows: list[dict[str, Any]]
    keys: list[str | None]  # each row's idempotency key (None: always a new prediction)
    # Each row's key for sticky canary assignment; None: the LIVE release alone (dry runs).
    traffic_keys: list[str | None] | None
    started: float  # time.perf_counter() when the call came in
    actor: str = ANONYMOUS  # who acts in the audit log

    @property
    def caller_id(self) -> int | None:
        """The caller's key id, stored with each prediction."""
        return self.caller.key_id if self.caller is not None else None

    def only(self, positions: Sequence[int]) -> Inputs:
        """The rows at these positions, with their keys."""
        traffic = self.traffic_keys
        return Inputs(self.task, self.caller, [self.rows[i] for i in positions],
                      [self.keys[i] for i in positions],
                      None if traffic is None else [traffic[i] for i in positions],
                      self.started, self.actor)


def actor_of(caller: Principal | None) -> str:
    """Who acts in the audit log for a call by ``caller``."""
    return caller.actor if caller is not None else ANONYMOUS
