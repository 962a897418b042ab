"""The evaluation gate's rule on known probabilities: gain where the task says, no slice
worse than allowed, the sense of each metric, and a full comparison table."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np

from app.ml import gate
from app.ml.task import GateSettings
from app.ml.training import Holdout

Y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
REVIEWED = np.array([False] * 6 + [True] * 4)


def proba(correct: list[bool], sure: float = 0.9) -> np.ndarray:
    """Two-class probabilities that get Y right where ``correct`` says."""
    p1 = np.where(np.array(correct) == (Y == 1), sure, 1 - sure)
    return np.column_stack([1 - p1, p1])


def holdout(correct: list[bool]) -> Holdout:
    return Holdout(np.zeros((len(Y), 1)), Y, REVIEWED, proba(correct))


def test_a_candidate_better_on_reviewed_rows_and_as_good_on_source_passes() -> None:
    live = proba([True] * 6 + [False, False, True, True])
    candidate = holdout([True] * 10)
    decision = gate.decide(GateSettings(improve_on="reviewed", min_improvement=0.2),
                           candidate, live, live_version=3)
    assert decision.decision == "PASSED" and decision.passed
    rows = {(r.metric, r.slice): r for r in decision.table}
    assert asdict(rows[("accuracy", "reviewed")]) == {"metric": "accuracy", "slice": "reviewed",
                                                      "rows": 4, "candidate": 1.0, "live": 0.5,
                                                      "gain": 0.5}
    assert rows[("accuracy", "source")].gain == 0.0
    assert rows[("accuracy", "all")].rows == 10
    assert rows[("log_loss", "reviewed")].gain > 0  # lower loss counts as a gain
    assert decision.live_version == 3 and decision.rule.improve_on == "reviewed"


def test_a_candidate_that_loses_too_much_on_source_rows_is_rejected() -> None:
    live = proba([True] * 6 + [False] * 4)
    candidate = holdout([True, True, True, True, False, False] + [True] * 4)
    decision = gate.decide(GateSettings(max_regression=0.1), candidate, live, 1)
    assert decision.decision == "REJECTED"
    # it gains on all rows (8/10 against 6/10) but loses 2/6 of the source rows
    assert decision.reasons[0].startswith("accuracy on the 10 all held-out rows gains +0.2")
    assert "the 6 source held-out rows loses 0.3333, more than the allowed 0.1000" in (
        decision.reasons[1])


def test_a_gain_below_the_minimum_is_rejected_and_the_bound_itself_passes() -> None:
    live = proba([True] * 9 + [False])
    candidate = holdout([True] * 10)
    assert gate.decide(GateSettings(min_improvement=0.2), candidate, live, 1).decision == "REJECTED"
    assert gate.decide(GateSettings(min_improvement=0.1), candidate, live, 1).decision == "PASSED"


def test_log_loss_as_primary_metric_prefers_the_lower_loss() -> None:
    live = proba([True] * 10, sure=0.6)
    sharper = holdout([True] * 10)  # same answers, more confident: lower log loss
    decision = gate.decide(GateSettings(primary_metric="log_loss", min_improvement=0.1),
                           sharper, live, 1)
    assert decision.decision == "PASSED", decision.reasons


def test_nothing_to_judge_on_is_rejected() -> None:
    no_reviews = Holdout(np.zeros((6, 1)), Y[:6], np.zeros(6, bool), proba([True] * 10)[:6])
    decision = gate.decide(GateSettings(improve_on="reviewed"), no_reviews,
                           proba([True] * 10)[:6], 1)
    assert decision.decision == "REJECTED" and not decision.passed
    assert "reviewed held-out rows" in decision.reasons[0]


def test_the_stored_decision_keeps_its_camel_case_json() -> None:
    live = proba([True] * 9 + [False])
    decision = gate.decide(GateSettings(promote_to="CANARY"), holdout([True] * 10), live, 4)
    stored = replace(decision, promotion="not promoted to CANARY: no room").to_json()
    assert list(stored) == ["decision", "passed", "reasons", "table", "liveVersion",
                            "primaryMetric", "improveOn", "minImprovement", "maxRegression",
                            "promoteTo", "promotion"]
    assert stored["decision"] == "PASSED" and stored["promoteTo"] == "CANARY"
    assert stored["table"][0] == asdict(decision.table[0])
    assert json.loads(json.dumps(stored)) == stored
    assert "liveVersion" not in gate.no_baseline(GateSettings(), "nothing LIVE").to_json()
