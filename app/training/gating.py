"""A retrained release before the evaluation gate: the LIVE baseline it is judged against,
the decision (``app.ml.gate``), its audit record, the promotion it calls for, and its event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from app.audit import log as audit
from app.db.tables import Release
from app.errors import ArbiterError
from app.events.topics import Message, ReleaseEventKind, release_event, releases_topic
from app.ml import gate
from app.ml.gate import GateDecision
from app.ml.task import TaskSpec
from app.quality.selection import reviewed_weights
from app.releases import stages
from app.releases.store import live_release, release_members

if TYPE_CHECKING:
    from app.ml.training import TrainedRelease

GATE_ACTOR = "system:gate"


async def _baseline(sessions: async_sessionmaker[AsyncSession], artifacts_dir: Path,
                    task: TaskSpec) -> tuple[Release | None, Any]:
    """The LIVE release and its loaded ensemble, or why there is nothing to compare with."""
    from app.releases.registry import build_ensemble  # loads artifacts: only when a job runs

    async with sessions() as session:
        live = await live_release(session, task.name)
        if live is None:
            return None, "the task has no LIVE release"
        if live.contract_hash != task.contract_hash():
            return live, f"LIVE v{live.version} has another feature contract"
        members = await release_members(session, live.id or 0)
    ensemble = await anyio.to_thread.run_sync(build_ensemble, task, live, members, artifacts_dir)
    return live, ensemble


async def evaluate(sessions: async_sessionmaker[AsyncSession], artifacts_dir: Path,
                   task: TaskSpec, trained: TrainedRelease, reviewed_ids: Sequence[str] = ()
                   ) -> tuple[Release | None, GateDecision]:
    """The LIVE release the candidate was compared with (its parent), and the decision.
    ``reviewed_ids``: the predictions of the reviewed held-out rows, in order, whose
    weights undo the selection of reviewed rows (``app.quality.selection``)."""
    live, baseline = await _baseline(sessions, artifacts_dir, task)
    holdout = trained.holdout
    assert holdout is not None
    if live is None or isinstance(baseline, str):
        return live, gate.no_baseline(task.gate, str(baseline))
    proba = await anyio.to_thread.run_sync(baseline.probabilities, holdout.X)
    weights = np.ones(len(holdout.y))
    if len(reviewed_ids) == int(holdout.reviewed.sum()) and len(reviewed_ids):
        async with sessions() as session:
            weights[holdout.reviewed] = await reviewed_weights(session, reviewed_ids)
    return live, gate.decide(task.gate, holdout, proba, live.version, weights)


def decided_entry(release: Release, decision: GateDecision, job_id: str) -> audit.Entry:
    """The audit record of the gate's decision on ``release``."""
    return audit.Entry(audit.Kind.GATE_DECIDED, GATE_ACTOR, "release", str(release.id),
                       {"version": release.version, "decision": decision.decision,
                        "passed": decision.passed, "promoteTo": decision.promote_to,
                        "reasons": decision.reasons, "job": job_id}, release.task)


async def promote_passed(session: AsyncSession, task: TaskSpec, release: Release,
                         decision: GateDecision) -> None:
    """Promote a passing release per the gate's rule; a refusal (say, the SHADOW limit)
    leaves it a CANDIDATE and says why on its gate record, without failing the training."""
    target = decision.promote_to
    if not decision.passed or target == stages.Stage.CANDIDATE:
        return
    percent = task.gate.canary_percent if target == stages.Stage.CANARY else None
    try:
        await stages.promote(session, task.name, release.version, target, percent,
                             GATE_ACTOR, f"passed the evaluation gate: {decision.reasons[0]}")
    except ArbiterError as exc:
        promotion = f"not promoted to {target}: {exc}"
        release.gate = replace(decision, promotion=promotion).to_json()
        session.add(release)


def decision_message(release: Release, decision: GateDecision, job_id: str) -> Message:
    """The ``GATE_DECISION`` event of the task's ``releaseEvents``."""
    return releases_topic(release.task), release_event(
        ReleaseEventKind.GATE_DECISION, release.task, version=release.version, job_id=job_id,
        status=decision.decision, reason="; ".join(decision.reasons), actor=GATE_ACTOR)
