"""Redaction of personal data: features a task file marks ``pii = true``.

The one place that decides what is personal and what a redacted value looks like; the
GraphQL types, the audit export and log lines all call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.access.roles import READERS, Role
from app.ml.task import TaskSpec

REDACTED = "[redacted]"
# Roles that see personal data as it was sent; everyone else reads REDACTED.
SEES_PII = READERS


def personal_columns(task: TaskSpec) -> frozenset[str]:
    """The task's PII inputs, and derived features computed from any of them (a ratio to
    income tells the income)."""
    inputs = {f.name for f in task.features if f.pii}
    derived = {d.name for d in task.derived if inputs.intersection(d.inputs)}
    return frozenset(inputs | derived)


def redact(task: TaskSpec | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every personal column replaced by REDACTED. An unknown task (its
    file was removed) redacts every value: what is personal is no longer known."""
    hidden = personal_columns(task) if task is not None else frozenset(values)
    return {k: REDACTED if k in hidden else v for k, v in values.items()}


def sees_pii(role: Role) -> bool:
    return role in SEES_PII
