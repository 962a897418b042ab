"""The prediction path: validate, pick the release, run and explain, route, store, answer.

Resolvers call these functions; so do tests, without GraphQL.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app import logs
from app.access.roles import Principal
from app.audit import log as audit
from app.db.pagination import Page, check_page_size, paginate
from app.db.rows import built, values_of
from app.db.tables import Prediction, ReviewItem, StageChange, Status
from app.db.types import utcnow
from app.errors import (
    AllMembersFailedError,
    BadRequestError,
    IdempotencyConflictError,
    NotFoundError,
)
from app.events.announcements import announce
from app.events.bus import EventBus, LocalBus
from app.events.topics import stored_events
from app.metrics import PREDICTION_STAGE_DURATION, PREDICTIONS
from app.ml.contract import to_matrix, validate_inputs
from app.ml.ensemble import Ensemble, MemberColumns, Outputs
from app.ml.explain import add_time
from app.ml.routing import Route, decide_routes
from app.ml.task import ReviewPolicy, TaskSpec
from app.predictions.batching import Batcher, InferencePool, collector_paused
from app.releases import stages
from app.releases.deployment import Deployment
from app.releases.registry import Registry
from app.releases.shadows import ShadowScorer
from app.settings import Settings

IDEMPOTENCY_KEY_MAX = 200
LARGE_BATCH = 1_000  # rows from which predictBatch pauses the cyclic garbage collector
log = logging.getLogger("arbiter.predictions")


@dataclass
class Services:
    """What the prediction path needs, built once by the composition root."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    registry: Registry
    wake_relay: Callable[[], None] = lambda: None  # called after committing outbox rows
    events: EventBus = field(default_factory=LocalBus)  # notices for subscriptions
    shadows: ShadowScorer = field(init=False)
    inference: InferencePool = field(init=False)  # the threads models run on
    model_calls: Batcher[tuple[Ensemble, np.ndarray]] = field(init=False)
    commits: Batcher[_Commit] = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.inference = InferencePool(s.inference_threads)
        self.shadows = ShadowScorer(self.sessions, self.inference, s.shadow_max_in_flight)
        window = s.batch_window_ms / 1000
        self.model_calls = Batcher("inference", functools.partial(_run_models, self.inference),
                                   s.batch_max_rows, window, size=lambda item: len(item[1]))
        self.commits = Batcher("commit", functools.partial(_commit, self), s.batch_max_rows,
                               window, size=lambda item: len(item.records))

    def close(self) -> None:
        """Stop the inference threads (after the last request)."""
        self.inference.close()

    async def announce(self, changes: Sequence[StageChange]) -> None:
        """Publish committed stage changes on ``releaseEvents`` (and log them)."""
        await stages.announce(self.events, self.sessions, changes)


_SORTED = json.JSONEncoder(sort_keys=True)  # json.dumps(sort_keys=True), without a new encoder


def input_hash(raw: dict[str, Any]) -> str:
    """SHA-256 of the input as ``json.dumps(raw, sort_keys=True)`` spells it (stored hashes
    depend on that spelling: keep it)."""
    return hashlib.sha256(_SORTED.encode(raw).encode()).hexdigest()


@dataclass(frozen=True)
class _Shape:
    """What every record of a task and release repeats: worked out once per call."""

    task: TaskSpec
    space: str
    columns: list[tuple[int, str, bool]]  # (index, model column, derived?)

    @classmethod
    def of(cls, task: TaskSpec, ensemble: Ensemble) -> _Shape:
        derived = {d.name for d in task.derived}
        return cls(task, ensemble.space.value,
                   [(j, name, name in derived) for j, name in enumerate(task.model_columns)])


def _explanation_head(shape: _Shape, explained_class: int, base: float, output: float,
                      status: str) -> dict[str, Any]:
    return {
        "status": status,
        "space": shape.space,
        "explainedClass": shape.task.classes[explained_class],
        "baseValue": base,
        "outputValue": output,
    }


def _probabilities(classes: tuple[str, ...], p: list[float]) -> list[dict[str, Any]]:
    return [{"label": c, "probability": v} for c, v in zip(classes, p, strict=True)]


@dataclass
class _MemberLists:
    """A member's outputs for a batch as Python lists (one conversion per array, not per
    element: per element costs 3x more), for the predicted class of each row."""

    name: str
    version: str
    weight: float
    error: str | None
    probabilities: list[list[float]]
    labels: list[int]
    base: list[float]
    shap: list[list[float]]  # per row, the predicted class's SHAP values
    output: list[float]

    @classmethod
    def of(cls, m: MemberColumns, labels: np.ndarray) -> _MemberLists:
        """``labels``: the ensemble's class of each row, which members explain."""
        if m.error is not None:
            return cls(m.name, m.version, m.weight, m.error, [], [], [], [], [])
        assert m.probabilities is not None and m.base is not None
        assert m.contributions is not None and m.scores is not None
        rows = np.arange(len(labels))
        return cls(m.name, m.version, m.weight, None, m.probabilities.tolist(),
                   m.probabilities.argmax(axis=1).tolist(), m.base.tolist(),
                   m.contributions[rows, :, labels].tolist(), m.scores[rows, labels].tolist())

    def json(self, shape: _Shape, i: int, c: int) -> dict[str, Any]:
        """Row i's entry in ``members`` (c: the ensemble's class). Its explanation is stored
        compact: SHAP values alone, in the order of the prediction's
        ``explanation.contributions``, whose features and values they share (a third of the
        bytes of a full one; the API returns both the same way)."""
        if self.error is not None:
            return {"name": self.name, "version": self.version, "weight": self.weight,
                    "error": self.error, "label": None, "probabilities": None,
                    "explanation": None}
        return {
            "name": self.name,
            "version": self.version,
            "weight": self.weight,
            "error": None,
            "label": shape.task.classes[self.labels[i]],
            "probabilities": _probabilities(shape.task.classes, self.probabilities[i]),
            "explanation": {**_explanation_head(shape, c, self.base[c], self.output[i], "OK"),
                            "shap": self.shap[i]},
        }


def _records(
    shape: _Shape,
    ensemble: Ensemble,
    out: Outputs,
    raws: Sequence[dict[str, Any]],
    caller: Principal | None,
    keys: Sequence[str | None],
    latency_ms: float,
) -> list[Prediction]:
    """The records of a batch's rows, built from whole columns."""
    task = shape.task
    classes = task.classes
    ids = [str(uuid.uuid4()) for _ in raws]
    routes = decide_routes(ensemble.policy, classes, out, ids)
    labels = out.labels.tolist()
    probabilities = out.probabilities.tolist()
    sets = out.prediction_sets.tolist()
    base = out.base.tolist()
    scores = out.scores.tolist()
    # (rows, classes, model columns): each class's SHAP values in contributions order
    shap = out.contributions.transpose(0, 2, 1).tolist()
    model_values = out.X.tolist()
    members = [_MemberLists.of(m, out.labels) for m in out.members]
    status = "PARTIAL" if any(m.error for m in members) else "OK"
    caller_id = caller.key_id if caller else None
    records = []
    for i, raw in enumerate(raws):
        c = labels[i]
        route, reasons = routes[i]
        values = model_values[i]
        contributions = [
            {"feature": name, "value": values[j] if derived else raw.get(name),
             "shap": shap[i][c][j], "derived": derived}
            for j, name, derived in shape.columns
        ]
        explanation = {**_explanation_head(shape, c, base[c], scores[i][c], status),
                       "contributions": contributions}
        if len(classes) > 2:  # so that a picture of any class can be drawn from what is stored
            explanation["otherClasses"] = [
                {"class": classes[k], "baseValue": base[k], "outputValue": scores[i][k],
                 "shap": shap[i][k]}
                for k in range(len(classes)) if k != c
            ]
        label = classes[c]
        # Every value is made here, of the column's type: the row is built without the
        # constructor's validation (see ``built``).
        records.append(built(Prediction, {
            "id": ids[i],
            "task": task.name,
            "release_id": ensemble.release_id,
            "release_version": ensemble.version,
            "caller_key_id": caller_id,
            "idempotency_key": keys[i],
            "input_hash": input_hash(raw),
            "input": raw,
            "label": label,
            "confidence": probabilities[i][c],
            "probabilities": _probabilities(classes, probabilities[i]),
            "prediction_set": [k for k, inside in zip(classes, sets[i], strict=True) if inside],
            "members": [m.json(shape, i, c) for m in members],
            "explanation": explanation,
            "route": route.value,
            "reasons": [r.to_json() for r in reasons],
            "status": Status.ACCEPTED if route is Route.AUTO else Status.PENDING_REVIEW,
            "final_label": label if route is Route.AUTO else None,
            "latency_ms": latency_ms,
            "created_at": utcnow(),
        }))
    return records


@dataclass
class _Ran:
    """One submitter's rows of a micro-batched ensemble call, and the call's timings."""

    results: Outputs
    timings: dict[str, float]


def _run_models(pool: InferencePool, items: list[tuple[Ensemble, np.ndarray]]
                ) -> Awaitable[list[_Ran | Exception]]:
    """Run a micro-batch on an inference thread: one ensemble call per release."""
    return pool.run(sum(len(X) for _, X in items), _run_groups, items)


def _run_groups(items: list[tuple[Ensemble, np.ndarray]]) -> list[_Ran | Exception]:
    by_release: dict[int, list[int]] = {}
    for n, (ensemble, _) in enumerate(items):
        by_release.setdefault(id(ensemble), []).append(n)
    outcomes: list[_Ran | Exception] = [RuntimeError("not run")] * len(items)
    for ns in by_release.values():
        ensemble = items[ns[0]][0]
        timings: dict[str, float] = {}
        try:
            results, errors = ensemble.predict_columns(
                np.concatenate([items[n][1] for n in ns]), timings)
        except Exception as exc:  # a bug, not a member failure (those come back in errors)
            for n in ns:
                outcomes[n] = exc
            continue
        offset = 0
        for n in ns:
            rows = len(items[n][1])
            outcomes[n] = (_Ran(results.sliced(offset, offset + rows), timings)
                           if results is not None
                           else AllMembersFailedError(ensemble.task.name, errors))
            offset += rows
    return outcomes


async def _run_rows(services: Services, ensemble: Ensemble, X: np.ndarray,
                    timings: dict[str, float]) -> list[Outputs]:
    """Results of one release for these rows, through the micro-batcher: up to
    ``batch_max_rows`` rows per call, submitted one after another so that concurrent
    predictions join a long batch's calls instead of waiting for all of them."""
    step = services.settings.batch_max_rows
    results: list[Outputs] = []
    for start in range(0, len(X), step):
        ran: _Ran = await services.model_calls.submit((ensemble, X[start:start + step]))
        results.append(ran.results)
        for stage, seconds in ran.timings.items():
            add_time(timings, stage, seconds)
    return results


@dataclass
class _Inference:
    """Records (not yet stored), and what is needed to store and observe them."""

    records: list[Prediction]
    policies: dict[int, ReviewPolicy]  # release id -> review policy of the release
    deployment: Deployment
    X: np.ndarray
    timings: dict[str, float]  # stage -> seconds (infer, explain, route)

    def only(self, positions: Sequence[int]) -> _Inference:
        """The records at these positions, with their rows of the model matrix."""
        return _Inference([self.records[j] for j in positions], self.policies,
                          self.deployment, self.X[list(positions)], self.timings)


async def _infer(
    services: Services,
    task: TaskSpec,
    rows: list[dict[str, Any]],
    caller: Principal | None,
    keys: Sequence[str | None],
    started: float,
    traffic_keys: Sequence[str | None] | None,
) -> _Inference:
    """Each row (stored under its idempotency key in ``keys``) answered by the LIVE release
    or, by sticky assignment on its traffic key, the CANARY; ``traffic_keys=None`` asks
    LIVE alone (dry runs)."""
    deployment = await services.registry.deployment(task.name)
    X = to_matrix(task, rows)
    chosen = ([deployment.live] * len(rows) if traffic_keys is None
              else [deployment.assign(k) for k in traffic_keys])
    records: list[Prediction | None] = [None] * len(rows)
    timings: dict[str, float] = {}
    for ensemble in {e.release_id: e for e in chosen}.values():
        indices = [i for i, e in enumerate(chosen) if e is ensemble]
        results = await _run_rows(services, ensemble, X[indices], timings)
        latency_ms = (time.perf_counter() - started) * 1000
        routing = time.perf_counter()  # the routing decision and the record it goes into
        shape = _Shape.of(task, ensemble)
        done = 0
        for out in results:
            mine = indices[done:done + len(out)]
            made = _records(shape, ensemble, out, [rows[i] for i in mine], caller,
                            [keys[i] for i in mine], latency_ms)
            for i, record in zip(mine, made, strict=True):
                records[i] = record
            done += len(out)
        add_time(timings, "route", time.perf_counter() - routing)
    policies = {e.release_id: e.policy for e in chosen}
    return _Inference([r for r in records if r is not None], policies, deployment, X, timings)


def _record_stored(task: TaskSpec, inference: _Inference, validate: float, store: float,
                   rows: Sequence[dict[str, Any]]) -> None:
    """Metrics and a log line for predictions that were just committed."""
    for stage, seconds in {"validate": validate, **inference.timings, "store": store}.items():
        PREDICTION_STAGE_DURATION.labels(task.name, stage).observe(seconds)
    for p in inference.records:
        PREDICTIONS.labels(task.name, str(p.release_version), p.route).inc()
    if len(inference.records) == 1:
        [p] = inference.records
        logs.bind(release=p.release_version, prediction_id=p.id)
        log.info("prediction stored: %s, route %s", p.label, p.route,
                 extra=_logged_inputs(task, rows))
    else:
        versions = sorted({p.release_version for p in inference.records})
        log.info("%d predictions stored (releases %s), %d routed to review",
                 len(inference.records), versions,
                 sum(p.route == Route.REVIEW for p in inference.records),
                 extra=_logged_inputs(task, rows))


def _logged_inputs(task: TaskSpec, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Inputs go to the logs only when the task allows it, and never its pii features."""
    if not task.log_inputs:
        return {}
    secret = {f.name for f in task.features if f.pii}
    return {"inputs": [{k: v for k, v in row.items() if k not in secret} for row in rows]}


def _observe(services: Services, inference: _Inference) -> None:
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


def _replay(existing: Prediction, raw: dict[str, Any], key: str) -> Prediction:
    if existing.input_hash != input_hash(raw):
        raise IdempotencyConflictError(key, existing.id)
    return existing


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
    key = _check_key(idempotency_key)
    entity = _check_key(entity_key, "entityKey")
    [p] = await _predict_rows(services, caller, task, [row], [key], [entity or key],
                              _actor(caller), started)
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
        entities = _keys_per_input(entity_keys, len(raws), "entityKeys")
        keys = _keys_per_input(idempotency_keys, len(raws), "idempotencyKeys")
        _no_repeats(keys)
        rows = validate_inputs(task, raws, batch=True)
        return await _predict_rows(services, caller, task, rows, keys,
                                   [e or k for e, k in zip(entities, keys, strict=True)],
                                   actor or _actor(caller), started)


async def _predict_rows(
    services: Services,
    caller: Principal | None,
    task: TaskSpec,
    rows: list[dict[str, Any]],
    keys: Sequence[str | None],
    traffic_keys: Sequence[str | None],
    actor: str,
    started: float,
) -> list[Prediction]:
    """Validated rows answered: those whose key was stored before with the stored
    prediction, the others predicted and stored in one transaction. A concurrent call that
    stored some of the keys first makes the commit fail (unique keys): the keys are then
    looked up again and only what is still missing is stored, with the predictions already
    made for it (the models do not run twice)."""
    validated = time.perf_counter() - started
    inference: _Inference | None = None
    made: dict[int, int] = {}  # input index -> its record's position in ``inference``
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        answers: list[Prediction | None] = await _stored_answers(
            services, caller, task.name, keys, rows)
        new = [i for i, a in enumerate(answers) if a is None]
        if not new:
            return [a for a in answers if a is not None]
        if inference is None:
            inference = await _infer(services, task, [rows[i] for i in new], caller,
                                     [keys[i] for i in new], started,
                                     [traffic_keys[i] for i in new])
        else:  # lost a race: what is still missing was predicted by the first attempt
            inference = inference.only([made[i] for i in new])
        made = {i: j for j, i in enumerate(new)}
        storing = time.perf_counter()
        try:
            await _store(services, inference.policies, inference.records, actor)
            break
        except IntegrityError:
            if attempt == _STORE_ATTEMPTS or not any(keys[i] for i in new):
                raise
    assert inference is not None  # the loop returned, raised or stored it
    _record_stored(task, inference, validated, time.perf_counter() - storing,
                   [rows[i] for i in new])
    _observe(services, inference)
    for i, record in zip(new, inference.records, strict=True):
        answers[i] = record
    return [a for a in answers if a is not None]


# How often a keyed batch that lost a race to a concurrent one looks its keys up again.
_STORE_ATTEMPTS = 3
# Keys looked up per query (well under the parameter limits of SQLite and asyncpg).
_LOOKUP_KEYS = 1_000


def _keys_per_input(keys: Sequence[str | None] | None, inputs: int, name: str
                    ) -> list[str | None]:
    if keys is None:
        return [None] * inputs
    if len(keys) != inputs:
        raise BadRequestError(
            f"{name} must have one key per input: {len(keys)} keys, {inputs} inputs")
    return [_check_key(k, name) for k in keys]


def _no_repeats(keys: Sequence[str | None]) -> None:
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            raise BadRequestError(
                f"idempotencyKeys repeats {key!r} (inputs {first[key]} and {i}); "
                f"a key names one prediction")
        first[key] = i


async def _stored_answers(
    services: Services, caller: Principal | None, task: str, keys: Sequence[str | None],
    rows: Sequence[dict[str, Any]],
) -> list[Prediction | None]:
    """Per input, the prediction already stored under its key (its input must be the
    same), or None for an input to predict."""
    answers: list[Prediction | None] = [None] * len(keys)
    keyed = {k: i for i, k in enumerate(keys) if k is not None}
    if not keyed:
        return answers
    caller_id = caller.key_id if caller else None
    names = list(keyed)
    async with services.sessions() as session:
        for start in range(0, len(names), _LOOKUP_KEYS):
            found = await session.exec(select(Prediction).where(
                Prediction.caller_key_id == caller_id,
                Prediction.task == task,
                col(Prediction.idempotency_key).in_(names[start:start + _LOOKUP_KEYS])))
            for p in found:
                i = keyed[p.idempotency_key or ""]
                answers[i] = _replay(p, rows[i], p.idempotency_key or "")
    return answers


def _check_key(key: str | None, name: str = "idempotencyKey") -> str | None:
    if key is None:
        return None
    if not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX:
        raise BadRequestError(
            f"{name} must be 1 to {IDEMPOTENCY_KEY_MAX} characters, got {len(key)}"
        )
    return key


# How strongly each reason suggests the model may be wrong: the queue serves higher first.
REASON_PRIORITY = {
    "MEMBER_FAILURE": 3,
    "OUT_OF_DISTRIBUTION": 3,
    "LOW_CONFIDENCE": 2,
    "MEMBER_DISAGREEMENT": 2,
    "AUDIT_SAMPLE": 0,
}


def open_review_item(policy: ReviewPolicy, p: Prediction) -> ReviewItem:
    """The review item of a prediction routed to REVIEW, under its release's policy."""
    return built(ReviewItem, {
        "id": str(uuid.uuid4()),
        "prediction_id": p.id,
        "task": p.task,
        "release_version": p.release_version,
        "status": "PENDING",
        "priority": sum(REASON_PRIORITY.get(r["code"], 1) for r in p.reasons),
        "due_at": p.created_at + timedelta(hours=policy.sla_hours),
        "created_at": p.created_at,
        "required_reviews": policy.required_reviews,
    })


def _actor(caller: Principal | None) -> str:
    return caller.actor if caller is not None else "system:anonymous"


def audit_entry(p: Prediction, actor: str, item: ReviewItem | None) -> audit.Entry:
    """The audit record of a prediction: its release, answer and routing decision. The log
    commits to the input by its hash (the input itself stays in ``predictions``)."""
    return audit.Entry(audit.Kind.PREDICTION_MADE, actor, "prediction", p.id, {
        "release": p.release_version, "label": p.label, "confidence": p.confidence,
        "route": p.route, "reasons": [{"code": r["code"], "detail": r["detail"]}
                                      for r in p.reasons],
        "inputHash": p.input_hash, "idempotencyKey": p.idempotency_key,
        "reviewItem": item.id if item is not None else None}, p.task)


@dataclass
class _Commit:
    """One caller's predictions to store, with what their review items need."""

    records: list[Prediction]
    policies: dict[int, ReviewPolicy]
    actor: str


async def _store(
    services: Services, policies: dict[int, ReviewPolicy], records: list[Prediction],
    actor: str,
) -> None:
    """Predictions, the review items of the routed ones and their audit events, committed
    in one transaction, possibly together with concurrent callers' (group commit)."""
    await services.commits.submit(_Commit(records, policies, actor))


async def _commit(services: Services, group: list[_Commit]) -> list[Exception | None]:
    """One transaction for the group; if it fails, each caller's own, so that one
    caller's conflict (a repeated idempotency key) fails that caller alone."""
    try:
        await _store_together(services, group)
        return [None] * len(group)
    except Exception as exc:
        if len(group) == 1:
            return [exc]
    outcomes: list[Exception | None] = []
    for one in group:
        try:
            await _store_together(services, [one])
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


async def _store_together(services: Services, group: list[_Commit]) -> None:
    records = [p for c in group for p in c.records]
    opened = {p.id: open_review_item(c.policies[p.release_id], p)
              for c in group for p in c.records if p.route == Route.REVIEW}
    values = [values_of(p) for p in records]
    async with services.sessions() as session, session.begin():
        # Bulk INSERTs of plain values (one statement per table, no unit of work): the
        # returned objects stay as built, outside any session.
        conn = await session.connection()
        await conn.execute(insert(Prediction), values)
        if opened:
            await conn.execute(insert(ReviewItem), [values_of(i) for i in opened.values()])
        audit.record(session, [audit_entry(p, c.actor, opened.get(p.id))
                               for c in group for p in c.records])
    await announce(services.events, stored_events(values, list(opened.values())))  # committed


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
    filters: list[Any] = _time_range(created_after, created_before)
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


def _time_range(start: datetime | None, end: datetime | None) -> list[Any]:
    for name, value in (("createdAfter", start), ("createdBefore", end)):
        if value is not None and value.tzinfo is None:
            raise BadRequestError(f"{name} needs a time zone (e.g. 2026-01-31T12:00:00Z), "
                                  f"got {value.isoformat()}")
    if start is not None and end is not None and start >= end:
        raise BadRequestError(f"createdAfter ({start.isoformat()}) must be before "
                              f"createdBefore ({end.isoformat()})")
    filters: list[Any] = []
    if start is not None:
        filters.append(col(Prediction.created_at) >= start)
    if end is not None:
        filters.append(col(Prediction.created_at) < end)
    return filters


@dataclass
class RoutingPreview:
    """What share of a set of inputs the LIVE release would send to review, and why."""

    total: int
    routed: int
    reasons: dict[str, int]  # code -> inputs it applied to
    sole_reasons: dict[str, int]  # code -> inputs routed by that reason alone


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
    records = (await _infer(services, task, rows, None, [None] * len(rows),
                            time.perf_counter(), None)).records
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
    return RoutingPreview(len(records), routed, reasons, sole)
