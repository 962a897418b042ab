"""The transactional outbox: jobs for the workers written beside the change that causes them.

A job row commits or rolls back with the state change, so a job is never sent for a change
that did not happen, and never lost for one that did. ``workers/relay.py`` sends rows to
Dramatiq after commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import OutboxMessage


def enqueue(session: AsyncSession, actor: str, payload: dict[str, Any],
            not_before: datetime | None = None) -> None:
    """Add a job to the session's transaction; ``not_before`` delays its delivery."""
    body = dict(payload)
    if not_before is not None:
        body["not_before"] = not_before.isoformat()
    session.add(OutboxMessage(actor=actor, payload=body))
