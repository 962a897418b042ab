"""What one more review does to an item: its next status, and how it was settled."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Consolidation:
    """An item's next state after a review: its status, plus (when resolved) how and with
    which label, or (when escalated) its raised priority; None where nothing changes."""

    status: str
    resolution: str | None = None
    needs_adjudication: bool | None = None
    priority: int | None = None
    final_label: str | None = None
    resolved_at: datetime | None = None

    def resolved_with(self, label: str, at: datetime) -> Consolidation:
        """The same state, settled with ``label`` at ``at``."""
        return replace(self, final_label=label, resolved_at=at)

    def columns(self) -> dict[str, Any]:
        """The item's columns to write: those this state changes."""
        return {name: value for name, value in asdict(self).items() if value is not None}
