"""Recording outcomes: ground truth that arrived after a prediction, named by the
prediction's id or by its entity key.

All outcomes of a call are checked first; any problem refuses them all, naming each one
(``line 4: ...`` from a file, ``outcome 2: ...`` from the API), and nothing is stored.
The same outcome recorded again changes nothing, so a file can be imported twice. A stored
outcome is the prediction's training label from then on (source ``outcome``: the truth
replaces a reviewer's label), and each is written to the audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.monitoring import Outcome
from app.db.tables import Prediction, TrainingLabel
from app.db.types import utcnow
from app.errors import BadRequestError
from app.ml.task import TaskSpec

SOURCE = "outcome"  # TrainingLabel.source of a label that came from an outcome
LOOKUP_CHUNK = 500  # ids or keys per IN (...) query
SHOWN_PROBLEMS = 20  # problems listed in the error; the count says how many more


@dataclass(frozen=True)
class OutcomeInput:
    """One outcome as given, with where it was given (``line 4``, ``outcome 2``)."""

    place: str
    label: str
    prediction_id: str | None = None
    entity_key: str | None = None
    observed_at: datetime | None = None


@dataclass(frozen=True)
class OutcomesRecorded:
    """How many outcomes a call stored, and how many were stored before (unchanged)."""

    recorded: int
    unchanged: int


@dataclass(frozen=True)
class _Found:
    """A prediction an outcome names: the columns recording needs."""

    id: str
    entity_key: str | None
    release_id: int
    label: str
    created_at: datetime


def _number(problem: str) -> int:
    """The line or outcome number a problem starts with ("line 4: ...")."""
    words = problem.split(":", 1)[0].split()
    return int(words[-1]) if words and words[-1].isdigit() else 0


def refuse(problems: list[str], what: str = "outcomes") -> None:
    """Raise the one error that lists every problem in order (the first
    ``SHOWN_PROBLEMS``)."""
    if not problems:
        return
    problems = sorted(problems, key=_number)
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    raise BadRequestError(f"{len(problems)} problem(s) in the {what}, nothing was stored: "
                          f"{shown}{more}")


def _shape_problems(task: TaskSpec, items: Sequence[OutcomeInput], now: datetime) -> list[str]:
    problems = []
    for o in items:
        if o.prediction_id is None and o.entity_key is None:
            problems.append(f"{o.place}: name the prediction by predictionId or entityKey")
        if o.label not in task.classes:
            problems.append(f"{o.place}: label {o.label!r} is not a class of {task.name} "
                            f"({', '.join(task.classes)})")
        if o.observed_at is not None and o.observed_at > now:
            problems.append(f"{o.place}: observedAt {o.observed_at.isoformat()} is in the future")
    return problems


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i:i + LOOKUP_CHUNK] for i in range(0, len(values), LOOKUP_CHUNK)]


_COLUMNS = (col(Prediction.id), col(Prediction.entity_key), col(Prediction.release_id),
            col(Prediction.label), col(Prediction.created_at))


async def _by_column(session: AsyncSession, task: str, column: object, values: set[str],
                     caller_key_id: int | None) -> list[_Found]:
    """The task's predictions whose ``column`` is one of ``values``; of one caller's only,
    unless ``caller_key_id`` is None (a reader of everything, the command line)."""
    found = []
    for chunk in _chunks(sorted(values)):
        query = select(*_COLUMNS).where(  # type: ignore[call-overload]
            col(Prediction.task) == task, column.in_(chunk))  # type: ignore[attr-defined]
        if caller_key_id is not None:
            query = query.where(col(Prediction.caller_key_id) == caller_key_id)
        found += [_Found(*row) for row in (await session.exec(query)).all()]
    return found


def _latest(candidates: list[_Found], before: datetime | None) -> _Found | None:
    """The entity's newest prediction made at or before the outcome was observed."""
    eligible = [p for p in candidates if before is None or p.created_at <= before]
    return max(eligible, key=lambda p: p.created_at, default=None)


async def _resolve(session: AsyncSession, task: TaskSpec, items: Sequence[OutcomeInput],
                   caller_key_id: int | None) -> tuple[list[_Found | None], list[str]]:
    """The prediction each outcome names (None when it names none), and the problems;
    another caller's predictions look absent, as they do everywhere else."""
    ids = {o.prediction_id for o in items if o.prediction_id is not None}
    keys = {o.entity_key for o in items if o.prediction_id is None and o.entity_key}
    by_id = {p.id: p for p in await _by_column(session, task.name, col(Prediction.id), ids,
                                               caller_key_id)}
    by_key: dict[str, list[_Found]] = {}
    for e in await _by_column(session, task.name, col(Prediction.entity_key), keys,
                              caller_key_id):
        by_key.setdefault(e.entity_key or "", []).append(e)
    found: list[_Found | None] = []
    problems = []
    for o in items:
        named, problem = (_named(task, o, by_id.get(o.prediction_id)) if o.prediction_id
                          else _by_entity(task, o, by_key))
        found.append(named)
        if problem:
            problems.append(f"{o.place}: {problem}")
    return found, problems


def _named(task: TaskSpec, o: OutcomeInput, p: _Found | None) -> tuple[_Found | None, str]:
    """The prediction an outcome names by id, or why it cannot be its prediction."""
    if p is None:
        return None, f"no prediction {o.prediction_id} of {task.name}"
    if o.entity_key is not None and p.entity_key != o.entity_key:
        return None, (f"prediction {p.id} was made for entity key {p.entity_key!r}, "
                      f"not {o.entity_key!r}")
    if o.observed_at is not None and o.observed_at < p.created_at:
        return None, f"observedAt {o.observed_at.isoformat()} is before prediction {p.id} was made"
    return p, ""


def _by_entity(task: TaskSpec, o: OutcomeInput, by_key: dict[str, list[_Found]]
               ) -> tuple[_Found | None, str]:
    """The entity's prediction an outcome is about, or why there is none."""
    if o.entity_key is None:
        return None, ""  # neither given: a shape problem, reported already
    p = _latest(by_key.get(o.entity_key, []), o.observed_at)
    if p is None:
        before = " made before observedAt" if o.observed_at else ""
        return None, f"no prediction of {task.name} for entity key {o.entity_key!r}{before}"
    return p, ""


async def _stored_outcomes(session: AsyncSession, ids: list[str]) -> dict[str, Outcome]:
    stored: dict[str, Outcome] = {}
    for chunk in _chunks(ids):
        rows = await session.exec(select(Outcome).where(col(Outcome.prediction_id).in_(chunk)))
        stored |= {o.prediction_id: o for o in rows.all()}
    return stored


async def _training_labels(session: AsyncSession, ids: list[str]) -> dict[str, TrainingLabel]:
    labels: dict[str, TrainingLabel] = {}
    for chunk in _chunks(ids):
        rows = await session.exec(
            select(TrainingLabel).where(col(TrainingLabel.prediction_id).in_(chunk)))
        labels |= {t.prediction_id: t for t in rows.all()}
    return labels


def _new_outcomes(items: Sequence[OutcomeInput], found: list[_Found | None],
                  stored: dict[str, Outcome]) -> tuple[dict[str, tuple[OutcomeInput, _Found]],
                                                        int, list[str]]:
    """The outcomes to store (by prediction id), how many were stored before, the
    conflicts: another label for a prediction that has one (stored, or earlier in the call)."""
    new: dict[str, tuple[OutcomeInput, _Found]] = {}
    unchanged, problems = 0, []
    for o, p in zip(items, found, strict=True):
        if p is None:
            continue
        before = stored.get(p.id)
        earlier = new.get(p.id)
        if before is not None and before.label != o.label:
            problems.append(f"{o.place}: prediction {p.id} already has the outcome "
                            f"{before.label!r}; a recorded outcome is not changed")
        elif earlier is not None and earlier[0].label != o.label:
            problems.append(f"{o.place}: prediction {p.id} is given {o.label!r} here and "
                            f"{earlier[0].label!r} at {earlier[0].place}")
        elif before is not None:
            unchanged += 1
        elif earlier is None:
            new[p.id] = (o, p)
    return new, unchanged, problems


def _store(session: AsyncSession, task: TaskSpec, new: dict[str, tuple[OutcomeInput, _Found]],
           labels: dict[str, TrainingLabel], actor: str, now: datetime) -> None:
    entries = []
    for pid, (o, p) in new.items():
        observed = o.observed_at or now
        session.add(Outcome(prediction_id=pid, task=task.name, release_id=p.release_id,
                            label=o.label, observed_at=observed, recorded_at=now,
                            recorded_by=actor))
        label = labels.get(pid) or TrainingLabel(prediction_id=pid, task=task.name,
                                                 label=o.label, source=SOURCE)
        label.label, label.source, label.created_at = o.label, SOURCE, now
        session.add(label)
        entries.append(audit.Entry(audit.Kind.OUTCOME_RECORDED, actor, "prediction", pid, {
            "label": o.label, "predicted": p.label, "observedAt": observed.isoformat()},
            task.name))
    audit.record(session, entries)


async def record_outcomes(sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                          items: Sequence[OutcomeInput], actor: str, limit: int,
                          unread: Sequence[str] = (), caller_key_id: int | None = None
                          ) -> OutcomesRecorded:
    """Check every outcome, then store the new ones in one transaction (see the module).
    ``unread``: problems of outcomes that could not even be read (a file's bad lines),
    reported with the others. ``caller_key_id``: outcomes may name only that API key's
    predictions (a predictor's); None: any (an admin, the command line)."""
    if not items:
        refuse(list(unread))
        raise BadRequestError("give at least one outcome")
    if len(items) > limit:
        raise BadRequestError(f"at most {limit} outcomes per call, got {len(items)}")
    now = utcnow()
    problems = [*unread, *_shape_problems(task, items, now)]
    try:
        return await _check_and_store(sessions, task, items, actor, now, problems,
                                      caller_key_id)
    except IntegrityError:
        # Another call stored an outcome, or a review a training label, for one of these
        # predictions between our reads and our writes: read again (now "unchanged", or a
        # conflict named like any other).
        return await _check_and_store(sessions, task, items, actor, now, problems,
                                      caller_key_id)


async def _check_and_store(sessions: async_sessionmaker[AsyncSession], task: TaskSpec,
                           items: Sequence[OutcomeInput], actor: str, now: datetime,
                           problems: list[str], caller_key_id: int | None) -> OutcomesRecorded:
    async with sessions() as session, session.begin():
        found, unresolved = await _resolve(session, task, items, caller_key_id)
        ids = sorted({p.id for p in found if p is not None})
        new, unchanged, conflicts = _new_outcomes(items, found,
                                                  await _stored_outcomes(session, ids))
        refuse(problems + unresolved + conflicts)
        _store(session, task, new, await _training_labels(session, list(new)), actor, now)
    return OutcomesRecorded(len(new), unchanged)
