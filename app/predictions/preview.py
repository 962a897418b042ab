"""Routing previews: what share of a set of inputs the LIVE release would send to review."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.db.tables import Prediction
from app.errors import BadRequestError
from app.ml.contract import validate_inputs
from app.ml.routing import Route
from app.predictions.inference import infer
from app.predictions.inputs import Inputs
from app.predictions.services import Services


@dataclass
class RoutingPreview:
    """What share of a set of inputs the LIVE release would send to review, and why."""

    total: int
    routed: int
    reasons: dict[str, int]  # code -> inputs it applied to
    sole_reasons: dict[str, int]  # code -> inputs routed by that reason alone

    @classmethod
    def of(cls, records: Sequence[Prediction]) -> RoutingPreview:
        """The tally of these (unstored) records' routes and reasons."""
        reasons: dict[str, int] = {}
        sole: dict[str, int] = {}
        for p in records:
            codes = {r["code"] for r in p.reasons}
            for code in codes:
                reasons[code] = reasons.get(code, 0) + 1
            if len(codes) == 1:
                [code] = codes
                sole[code] = sole.get(code, 0) + 1
        routed = sum(p.route == Route.REVIEW for p in records)
        return cls(len(records), routed, reasons, sole)


async def preview_routing(
    services: Services, task_name: str, raws: Sequence[Any]
) -> RoutingPreview:
    """A dry run of the prediction path: nothing is stored, no review item is opened."""
    task = services.registry.task(task_name)
    if not raws:
        raise BadRequestError("routingPreview needs at least one input")
    if len(raws) > services.settings.max_batch_size:
        raise BadRequestError(
            f"routingPreview takes at most {services.settings.max_batch_size} "
            f"inputs, got {len(raws)}"
        )
    rows = validate_inputs(task, raws, batch=True)
    inputs = Inputs(task, None, rows, [None] * len(rows), None, time.perf_counter())
    return RoutingPreview.of((await infer(services, inputs)).records)
