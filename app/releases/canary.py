"""The canary guard: retire a CANARY whose reviewed outcomes fall behind LIVE's.

Both releases are judged on the same predictions: those the canary answered, that people
reviewed, and that LIVE scored off the response path. The guard acts on the configured
margin (``gate.canary_max_shortfall``) once ``gate.canary_min_reviewed`` such predictions
exist; the reason it records gives both accuracies, n, and an exact McNemar p-value for
the reader to judge how much chance could explain (it does not gate the decision).
"""

from __future__ import annotations

from scipy.stats import binomtest
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import StageChange
from app.ml.task import TaskSpec
from app.releases.comparison import Pair, paired_outputs
from app.releases.stages import change_stage, lock_task, releases_in
from app.releases.store import Stage, live_release

CANARY_GUARD_ACTOR = "system:canary-guard"


def mcnemar_p(pairs: list[Pair]) -> float:
    """One-sided exact McNemar test that the canary is worse than LIVE on these rows."""
    canary_only = sum(p.release_label == p.reviewed_label != p.live_label for p in pairs)
    live_only = sum(p.live_label == p.reviewed_label != p.release_label for p in pairs)
    if canary_only + live_only == 0:
        return 1.0
    return float(binomtest(live_only, canary_only + live_only, 0.5,
                           alternative="greater").pvalue)


async def check_canary(session: AsyncSession, task: TaskSpec) -> list[StageChange]:
    """Judge the task's CANARY, if any; retire it (actor ``system:canary-guard``) when its
    accuracy on reviewed predictions trails LIVE's on the same ones by more than the gate's
    margin. Returns the stage changes written (none when the canary stays)."""
    await lock_task(session, task.name)
    canaries = await releases_in(session, task.name, Stage.CANARY)
    live = await live_release(session, task.name)
    if not canaries or live is None:
        return []
    [canary] = canaries
    reviewed = [p for p in await paired_outputs(session, canary, live)
                if p.reviewed_label is not None]
    n = len(reviewed)
    if n < task.gate.canary_min_reviewed:
        return []
    canary_accuracy = sum(p.release_label == p.reviewed_label for p in reviewed) / n
    live_accuracy = sum(p.live_label == p.reviewed_label for p in reviewed) / n
    shortfall = live_accuracy - canary_accuracy
    if shortfall <= task.gate.canary_max_shortfall:
        return []
    reason = (
        f"canary accuracy {canary_accuracy:.3f} trails LIVE release {live.version}'s "
        f"{live_accuracy:.3f} on the same {n} reviewed predictions by {shortfall:.3f} "
        f"(allowed {task.gate.canary_max_shortfall:.3f}; McNemar p = {mcnemar_p(reviewed):.3g})"
    )
    change = await change_stage(session, canary, Stage.RETIRED, 0.0, CANARY_GUARD_ACTOR, reason)
    await session.flush()
    return [change]
