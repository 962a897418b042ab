"""Reading stored predictions: one by id, or a filtered page, as far as the caller may see."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import col

from app.access.roles import Principal
from app.db.pagination import Page, check_page_size, paginate
from app.db.tables import Prediction
from app.db.time_range import time_range_filters
from app.errors import NotFoundError
from app.predictions.services import Services


async def get_prediction(services: Services, caller: Principal, prediction_id: str) -> Prediction:
    """A stored prediction the caller may see; others' predictions look absent."""
    async with services.sessions() as session:
        found = await session.get(Prediction, prediction_id)
    if found is None or not (caller.reads_everything or found.caller_key_id == caller.key_id):
        raise NotFoundError(f"no prediction {prediction_id!r}")
    return found


async def list_predictions(
    services: Services,
    caller: Principal,
    task: str | None,
    *,
    route: str | None = None,
    status: str | None = None,
    release: int | None = None,
    label: str | None = None,
    final_label: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    first: int = 50,
    after: str | None = None,
) -> Page[Prediction]:
    """Newest first, keyset-paginated, filtered to what the caller may see. The time range
    is half-open: ``created_after <= created_at < created_before``."""
    check_page_size(first, services.settings.page_size_max)
    filters: list[Any] = time_range_filters(col(Prediction.created_at), created_after,
                                            created_before, ("createdAfter", "createdBefore"))
    if task is not None:
        services.registry.task(task)
        filters.append(Prediction.task == task)
    if not caller.reads_everything:
        filters.append(Prediction.caller_key_id == caller.key_id)
    for column, value in (
        (Prediction.route, route),
        (Prediction.status, status),
        (Prediction.release_version, release),
        (Prediction.label, label),
        (Prediction.final_label, final_label),
    ):
        if value is not None:
            filters.append(column == value)
    async with services.sessions() as session:
        return await paginate(session, Prediction, filters, first, after)
