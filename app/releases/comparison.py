"""How a SHADOW or CANARY release compares with LIVE on the same inputs.

A pair is one stored prediction scored by both releases: for a SHADOW, its ``ShadowOutput``
beside the LIVE release's answer; for a CANARY, its answer beside LIVE's ``ShadowOutput``.
Reviewed pairs (a ``TrainingLabel`` exists) give both releases' accuracy on the same rows.
Only pairs with the current LIVE release count, so every number compares the same two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.tables import Prediction, Release, ShadowOutput, TrainingLabel
from app.errors import BadRequestError, NoLiveReleaseError
from app.releases.stages import find_release
from app.releases.store import live_release


@dataclass(frozen=True)
class Pair:
    """One input as the compared release and LIVE labelled it, and what people said."""

    release_label: str
    live_label: str
    reviewed_label: str | None


@dataclass(frozen=True)
class Tally:
    """Agreement and reviewed accuracy over a set of pairs; ratios are None without rows."""

    paired: int
    agreed: int
    reviewed: int
    release_correct: int
    live_correct: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.paired if self.paired else None

    @property
    def release_accuracy(self) -> float | None:
        return self.release_correct / self.reviewed if self.reviewed else None

    @property
    def live_accuracy(self) -> float | None:
        return self.live_correct / self.reviewed if self.reviewed else None


@dataclass(frozen=True)
class ClassTally:
    """Per class: agreement among pairs LIVE labelled ``label``; accuracy (recall) among
    reviewed pairs people labelled ``label``."""

    label: str
    tally: Tally


@dataclass(frozen=True)
class ReleaseComparison:
    """A release against the current LIVE release of its task."""

    task: str
    version: int
    stage: str
    live_version: int
    overall: Tally
    by_class: list[ClassTally]


def tally(agreeing: list[Pair], reviewed: list[Pair]) -> Tally:
    return Tally(
        paired=len(agreeing),
        agreed=sum(p.release_label == p.live_label for p in agreeing),
        reviewed=len(reviewed),
        release_correct=sum(p.release_label == p.reviewed_label for p in reviewed),
        live_correct=sum(p.live_label == p.reviewed_label for p in reviewed),
    )


async def _scored(session: AsyncSession, answered_by: int, scored_by: int) -> list[Any]:
    """(label answered, label scored off the path, reviewed label or None) per prediction."""
    rows = await session.exec(
        select(Prediction.label, ShadowOutput.label, TrainingLabel.label)
        .join(ShadowOutput, col(ShadowOutput.prediction_id) == col(Prediction.id))
        .outerjoin(TrainingLabel, col(TrainingLabel.prediction_id) == col(Prediction.id))
        .where(Prediction.release_id == answered_by, ShadowOutput.release_id == scored_by)
    )
    return list(rows.all())


async def paired_outputs(session: AsyncSession, release: Release, live: Release) -> list[Pair]:
    """Every pair of ``release`` with ``live``, whether it shadowed or answered (a release
    may have been SHADOW, then CANARY)."""
    assert release.id is not None and live.id is not None
    shadowed = await _scored(session, live.id, release.id)
    answered = await _scored(session, release.id, live.id)
    return ([Pair(mine, theirs, reviewed) for theirs, mine, reviewed in shadowed]
            + [Pair(mine, theirs, reviewed) for mine, theirs, reviewed in answered])


async def compare_release(
    session: AsyncSession, task: str, version: int, classes: tuple[str, ...]
) -> ReleaseComparison:
    """Agreement with LIVE and accuracy of both on reviewed predictions, overall and by
    class (``classes`` in the task's order)."""
    release = await find_release(session, task, version)
    live = await live_release(session, task)
    if live is None:
        raise NoLiveReleaseError(task)
    if live.id == release.id:
        raise BadRequestError(
            f"release {version} of {task!r} is the LIVE release; compare a SHADOW or CANARY "
            "release with it"
        )
    pairs = await paired_outputs(session, release, live)
    reviewed = [p for p in pairs if p.reviewed_label is not None]
    by_class = [
        ClassTally(c, tally([p for p in pairs if p.live_label == c],
                            [p for p in reviewed if p.reviewed_label == c]))
        for c in classes
    ]
    return ReleaseComparison(task, version, release.stage, live.version,
                             tally(pairs, reviewed), by_class)
