"""Which loaded ensembles of a task serve traffic, and which one answers a given caller."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from app.ml.ensemble import Ensemble

BUCKET_SPAN = 100.0  # traffic points are percents

R = TypeVar("R")  # a release: a loaded ensemble (serving) or its row (backfill)


def traffic_point(task: str, key: str) -> float:
    """A stable point in [0, 100) for (task, key): the same key always lands on the same
    side of a canary's percent, in every process, so assignment is sticky."""
    digest = hashlib.sha256(f"{task}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * BUCKET_SPAN


def observed_pairs(live: R, canary: R | None, shadows: Sequence[R]) -> list[tuple[R, R]]:
    """(observer, answering release): who scores an input off the response path, for
    comparison. Each SHADOW scores what LIVE answered; LIVE scores what the CANARY answered
    (pairs for the canary guard). The one rule for serving and for the backfill."""
    return [(s, live) for s in shadows] + ([(live, canary)] if canary is not None else [])


@dataclass(frozen=True)
class Deployment:
    """A task's LIVE ensemble, its CANARY (with its share of traffic) and its SHADOWs."""

    live: Ensemble
    canary: Ensemble | None = None
    canary_percent: float = 0.0
    shadows: tuple[Ensemble, ...] = ()

    def assign(self, key: str | None) -> Ensemble:
        """The ensemble that answers: the canary for keys whose point falls below its
        percent, else LIVE. Without a key the draw is random (no stickiness to keep)."""
        if self.canary is None:
            return self.live
        point = (traffic_point(self.live.task.name, key) if key is not None
                 else random.random() * BUCKET_SPAN)
        return self.canary if point < self.canary_percent else self.live

    def observers(self, answered: Ensemble) -> tuple[Ensemble, ...]:
        """The ensembles that score what ``answered`` answered (see ``observed_pairs``)."""
        return tuple(observer for observer, a in observed_pairs(
            self.live, self.canary, self.shadows) if a is answered)
