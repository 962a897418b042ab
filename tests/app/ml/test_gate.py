"""The evaluation gate's rule on known probabilities: gain where the task says, no slice
worse than allowed, the sense of each metric, a full comparison table, and the paired test
with its minimum of rows (the first tests check the rule with the test switched off:
``LOOSE``)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from app.ml import gate
from app.ml.task import GateSettings
from app.ml.training import Holdout

Y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
REVIEWED = np.array([False] * 6 + [True] * 4)
LOOSE: dict[str, Any] = {"min_rows": 1, "significance": 1.0}


def proba(correct: list[bool], sure: float = 0.9) -> np.ndarray:
    """Two-class probabilities that get Y right where ``correct`` says."""
    p1 = np.where(np.array(correct) == (Y == 1), sure, 1 - sure)
    return np.column_stack([1 - p1, p1])


def holdout(correct: list[bool]) -> Holdout:
    return Holdout(np.zeros((len(Y), 1)), Y, REVIEWED, proba(correct))


def test_a_candidate_better_on_reviewed_rows_and_as_good_on_source_passes() -> None:
    live = proba([True] * 6 + [False, False, True, True])
    candidate = holdout([True] * 10)
    decision = gate.decide(GateSettings(improve_on="reviewed", min_improvement=0.2, **LOOSE),
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
    decision = gate.decide(GateSettings(max_regression=0.1, **LOOSE), candidate, live, 1)
    assert decision.decision == "REJECTED"
    # it gains on all rows (8/10 against 6/10) but loses 2/6 of the source rows
    assert decision.reasons[0].startswith("accuracy on the 10 all held-out rows gains +0.2")
    assert "the 6 source held-out rows loses 0.3333, more than the allowed 0.1000" in (
        decision.reasons[1])


def test_a_gain_below_the_minimum_is_rejected_and_the_bound_itself_passes() -> None:
    live = proba([True] * 9 + [False])
    candidate = holdout([True] * 10)
    def decided(minimum: float) -> str:
        return gate.decide(GateSettings(min_improvement=minimum, **LOOSE), candidate, live,
                           1).decision
    assert decided(0.2) == "REJECTED"
    assert decided(0.1) == "PASSED"


def test_log_loss_as_primary_metric_prefers_the_lower_loss() -> None:
    live = proba([True] * 10, sure=0.6)
    sharper = holdout([True] * 10)  # same answers, more confident: lower log loss
    decision = gate.decide(GateSettings(primary_metric="log_loss", min_improvement=0.1,
                                        **LOOSE),
                           sharper, live, 1)
    assert decision.decision == "PASSED", decision.reasons


def test_nothing_to_judge_on_is_insufficient_evidence() -> None:
    no_reviews = Holdout(np.zeros((6, 1)), Y[:6], np.zeros(6, bool), proba([True] * 10)[:6])
    decision = gate.decide(GateSettings(improve_on="reviewed"), no_reviews,
                           proba([True] * 10)[:6], 1)
    assert decision.decision == "INSUFFICIENT_EVIDENCE" and not decision.passed
    assert "0 reviewed held-out rows: fewer than the 10 needed" in decision.reasons[0]


def test_the_stored_decision_keeps_its_camel_case_json() -> None:
    live = proba([True] * 9 + [False])
    decision = gate.decide(GateSettings(promote_to="CANARY", **LOOSE), holdout([True] * 10),
                           live, 4)
    stored = replace(decision, promotion="not promoted to CANARY: no room").to_json()
    assert list(stored) == ["decision", "passed", "reasons", "table", "liveVersion",
                            "primaryMetric", "improveOn", "minImprovement", "maxRegression",
                            "promoteTo", "promotion", "test", "minRows", "significance"]
    assert stored["test"]["rows"] == 10 and stored["test"]["pValue"] == 0.5
    assert stored["decision"] == "PASSED" and stored["promoteTo"] == "CANARY"
    assert stored["table"][0] == asdict(decision.table[0])
    assert json.loads(json.dumps(stored)) == stored
    assert "liveVersion" not in gate.no_baseline(GateSettings(), "nothing LIVE").to_json()


# --- the paired test ------------------------------------------------------------------------

def _paired(n: int, wins: int, losses: int) -> tuple[Holdout, np.ndarray]:
    """n two-class rows, all reviewed: the candidate right everywhere but ``losses`` rows,
    LIVE wrong on ``wins`` rows the candidate gets right."""
    y = np.arange(n) % 2
    def probs(correct: np.ndarray) -> np.ndarray:
        p1 = np.where(correct == (y == 1), 0.9, 0.1)
        return np.column_stack([1 - p1, p1])
    cand = np.ones(n, bool)
    cand[:losses] = False
    live = np.ones(n, bool)
    live[losses:losses + wins] = False
    return Holdout(np.zeros((n, 1)), y, np.ones(n, bool), probs(cand)), probs(live)


def test_a_gain_on_a_few_discordant_pairs_is_not_significant() -> None:
    candidate, live = _paired(200, wins=4, losses=1)  # +1.5 points, McNemar p = 0.1875
    decision = gate.decide(GateSettings(), candidate, live, 1)
    assert decision.decision == "REJECTED"
    assert "not significant" in decision.reasons[0]
    assert decision.test is not None and decision.test.p_value == 0.1875
    assert "exact McNemar, one-sided, on 5 discordant pairs (4 won, 1 lost)" in (
        decision.reasons[0])


def test_a_clear_gain_passes_with_its_interval() -> None:
    candidate, live = _paired(60, wins=12, losses=1)
    decision = gate.decide(GateSettings(), candidate, live, 1)
    assert decision.decision == "PASSED", decision.reasons
    test = decision.test
    assert test is not None and test.rows == 60 and test.p_value < 0.01
    assert test.interval[0] > 0 and abs(test.estimate - 11 / 60) < 1e-12


def test_too_few_rows_leave_it_a_candidate_whatever_the_gain() -> None:
    candidate, live = _paired(9, wins=8, losses=0)
    decision = gate.decide(GateSettings(), candidate, live, 1)
    assert decision.decision == "INSUFFICIENT_EVIDENCE" and not decision.passed


def test_weights_undo_the_selection_of_reviewed_rows() -> None:
    """The wins are on rule-routed rows (weight 1); the audit sample (weight 50, standing
    for the AUTO traffic) shows no gain: weighted, the gain is small and not significant."""
    candidate, live = _paired(60, wins=12, losses=0)
    weights = np.where(np.arange(60) >= 40, 50.0, 1.0)  # rows 40..59: audit sample, no wins
    unweighted = gate.decide(GateSettings(), candidate, live, 1)
    weighted = gate.decide(GateSettings(), candidate, live, 1, weights)
    assert unweighted.decision == "PASSED"
    assert weighted.test is not None and weighted.test.weighted
    assert weighted.test.estimate < unweighted.test.estimate / 5  # type: ignore[union-attr]
    assert "weighted to undo the selection" in weighted.reasons[0]
    left_out = gate.decide(GateSettings(), candidate, live, 1, np.where(
        np.arange(60) < 51, 0.0, 1.0))
    assert left_out.decision == "INSUFFICIENT_EVIDENCE"  # weight 0: not judged on
