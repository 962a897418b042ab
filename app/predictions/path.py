"""The prediction path: validate, pick the release, run and explain, route, store, answer.

Resolvers call these functions; so do tests, without GraphQL. The rooms of the path:
``inference`` (running the models), ``records`` (what is stored of an answer),
``idempotency`` (repeated keys), ``store`` (group commit); reading back is ``queries``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from app import logs
from app.access.roles import Principal
from app.db.tables import Prediction
from app.errors import BadRequestError
from app.metrics import PREDICTION_STAGE_DURATION, PREDICTIONS
from app.ml.contract import validate_inputs
from app.ml.routing import Route
from app.predictions.batching import collector_paused
from app.predictions.idempotency import check_key, keys_per_input, no_repeats, stored_answers
from app.predictions.inference import Inference, infer
from app.predictions.inputs import Inputs, actor_of
from app.predictions.services import Services
from app.predictions.store import Commit

LARGE_BATCH = 1_000  # rows from which predictBatch pauses the cyclic garbage collector
# How often a keyed batch that lost a race to a concurrent one looks its keys up again.
_STORE_ATTEMPTS = 3
log = logging.getLogger("arbiter.predictions")


async def predict(
    services: Services,
    caller: Principal | None,
    task_name: str,
    raw: Any,
    idempotency_key: str | None = None,
    entity_key: str | None = None,
) -> Prediction:
    """One explained, routed, stored prediction; a repeated key returns the stored one.
    The entity key (else the idempotency key) keeps canary assignment sticky."""
    started = time.perf_counter()
    task = services.registry.task(task_name)
    logs.bind(task=task.name)
    [row] = validate_inputs(task, [raw])
    key = check_key(idempotency_key)
    entity = check_key(entity_key, "entityKey")
    [p] = await _predict_rows(services, Inputs(task, caller, [row], [key], [entity or key],
                                               started, actor_of(caller)))
    return p


async def predict_batch(
    services: Services,
    caller: Principal | None,
    task_name: str,
    raws: Sequence[Any],
    entity_keys: Sequence[str | None] | None = None,
    actor: str | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
) -> list[Prediction]:
    """All inputs validated first (every problem listed), then stored in one transaction.
    ``entity_keys`` (one per input, or none) keep canary assignment sticky per row;
    ``idempotency_keys`` (one per input, or none; a row without one is always new) make a
    retried batch answer the rows it stored before with the stored predictions, and store
    only the others; ``actor`` names who acts in the audit log when there is no caller
    (the CLI)."""
    started = time.perf_counter()
    task = services.registry.task(task_name)
    logs.bind(task=task.name)
    if not raws:
        raise BadRequestError("predictBatch needs at least one input")
    limit = services.settings.max_batch_size
    if len(raws) > limit:
        raise BadRequestError(f"predictBatch takes at most {limit} inputs, got {len(raws)}")
    with collector_paused() if len(raws) >= LARGE_BATCH else contextlib.nullcontext():
        entities = keys_per_input(entity_keys, len(raws), "entityKeys")
        keys = keys_per_input(idempotency_keys, len(raws), "idempotencyKeys")
        no_repeats(keys)
        rows = validate_inputs(task, raws, batch=True)
        traffic = [e or k for e, k in zip(entities, keys, strict=True)]
        return await _predict_rows(services, Inputs(task, caller, rows, keys, traffic, started,
                                                     actor or actor_of(caller)))


async def _predict_rows(services: Services, inputs: Inputs) -> list[Prediction]:
    """Validated rows answered: those whose key was stored before with the stored
    prediction, the others predicted and stored in one transaction. A concurrent call that
    stored some of the keys first makes the commit fail (unique keys): the keys are then
    looked up again and only what is still missing is stored, with the predictions already
    made for it (the models do not run twice)."""
    validated = time.perf_counter() - inputs.started
    inference: Inference | None = None
    made: dict[int, int] = {}  # input index -> its record's position in ``inference``
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        answers = await stored_answers(services.sessions, inputs)
        new = [i for i, a in enumerate(answers) if a is None]
        if not new:
            return [a for a in answers if a is not None]
        if inference is None:
            inference = await infer(services, inputs.only(new))
        else:  # lost a race: what is still missing was predicted by the first attempt
            inference = inference.only([made[i] for i in new])
        made = {i: j for j, i in enumerate(new)}
        storing = time.perf_counter()
        try:
            await services.commits.submit(
                Commit(inference.records, inference.policies, inputs.actor))
            break
        except IntegrityError:
            if attempt == _STORE_ATTEMPTS or not any(inputs.keys[i] for i in new):
                raise
    assert inference is not None  # the loop returned, raised or stored it
    _record_stored(inputs.only(new), inference, validated, time.perf_counter() - storing)
    _observe(services, inference)
    for i, record in zip(new, inference.records, strict=True):
        answers[i] = record
    return [a for a in answers if a is not None]


def _record_stored(inputs: Inputs, inference: Inference, validate: float, store: float
                   ) -> None:
    """Metrics and a log line for predictions that were just committed (``inputs``: their
    rows)."""
    task = inputs.task
    for stage, seconds in {"validate": validate, **inference.timings, "store": store}.items():
        PREDICTION_STAGE_DURATION.labels(task.name, stage).observe(seconds)
    for p in inference.records:
        PREDICTIONS.labels(task.name, str(p.release_version), p.route).inc()
    if len(inference.records) == 1:
        [p] = inference.records
        logs.bind(release=p.release_version, prediction_id=p.id)
        log.info("prediction stored: %s, route %s", p.label, p.route,
                 extra=_logged_inputs(inputs))
    else:
        versions = sorted({p.release_version for p in inference.records})
        log.info("%d predictions stored (releases %s), %d routed to review",
                 len(inference.records), versions,
                 sum(p.route == Route.REVIEW for p in inference.records),
                 extra=_logged_inputs(inputs))


def _logged_inputs(inputs: Inputs) -> dict[str, Any]:
    """Inputs go to the logs only when the task allows it, and never its pii features."""
    if not inputs.task.log_inputs:
        return {}
    secret = {f.name for f in inputs.task.features if f.pii}
    return {"inputs": [{k: v for k, v in row.items() if k not in secret}
                       for row in inputs.rows]}


def _observe(services: Services, inference: Inference) -> None:
    """After the store: SHADOWs score LIVE-answered rows, LIVE scores canary-answered rows."""
    d = inference.deployment
    for answered in {d.live, *([d.canary] if d.canary else [])}:
        indices = [i for i, p in enumerate(inference.records)
                   if p.release_id == answered.release_id]
        if not indices:
            continue
        ids = [inference.records[i].id for i in indices]
        for observer in d.observers(answered):
            services.shadows.submit(observer, ids, inference.X[indices])
