"""The ensemble runtime on real trained members: probabilities, labels and an explanation
that adds up exactly, for the ensemble and for every member, in every output space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from app.examples.loan import generate
from app.ml.algorithms import OutputSpace
from app.ml.contract import frame_to_matrix, to_matrix, validate_inputs
from app.ml.data import load_frame, training_arrays
from app.ml.ensemble import Ensemble, LoadedMember, RowResult
from app.ml.explain import MemberExplainer, MemberScores
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease, fit_release

TOL = 1e-6
CASES = ["breast_cancer", "loan_default", "synthetic_binary", "synthetic_3_classes"]


@dataclass
class Case:
    task: TaskSpec
    release: TrainedRelease
    ensemble: Ensemble
    X: np.ndarray  # ~200 rows to predict


def _synthetic_case(n_classes: int, synthetic_task_factory: Callable[[int], TaskSpec],
                    synthetic_data: Callable[..., Any],
                    make_ensemble: Callable[[TrainedRelease], Ensemble]) -> Case:
    task = synthetic_task_factory(n_classes)
    rows, y = synthetic_data(1500, n_classes, 21)
    release = fit_release(task, to_matrix(task, validate_inputs(task, rows)), y)
    new_rows, _ = synthetic_data(200, n_classes, 22)
    X = to_matrix(task, validate_inputs(task, new_rows, batch=True))
    return Case(task, release, make_ensemble(release), X)


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    make_ensemble = request.getfixturevalue("make_ensemble")
    if request.param == "breast_cancer":
        task = request.getfixturevalue("breast_cancer_task")
        release = request.getfixturevalue("breast_cancer_release")
        X, _ = training_arrays(task, load_frame(task))
        return Case(task, release, make_ensemble(release), X[:200])
    if request.param == "loan_default":
        task = request.getfixturevalue("loan_task")
        release = request.getfixturevalue("loan_release")
        X = frame_to_matrix(task, generate(rows=200, seed=404))
        assert np.isnan(X).any(), "some rows lack the optional credit history"
        return Case(task, release, make_ensemble(release), X)
    n_classes = 2 if request.param == "synthetic_binary" else 3
    return _synthetic_case(n_classes, request.getfixturevalue("synthetic_task_factory"),
                           request.getfixturevalue("synthetic_data"), make_ensemble)


@pytest.fixture(scope="module")
def predicted(case: Case) -> tuple[list[RowResult], dict[str, str]]:
    return case.ensemble.predict(case.X)


def explained_output(space: OutputSpace, p: np.ndarray, c: int) -> float:
    """What the explanation of class c explains, computed from the probabilities."""
    if space is OutputSpace.PROBABILITY:
        return float(p[c])
    if len(p) == 2:
        # log(p_c / (1 - p_c)), with 1 - p_c taken as the other class's probability so that
        # confident rows keep their precision
        return float(np.log(p[c]) - np.log(p[1 - c]))
    return float(np.log(p[c]) - np.log(p).mean())


# --- the expected setup --------------------------------------------------------------------


def test_cases_cover_both_spaces_and_class_counts(case: Case) -> None:
    expected = {
        "breast_cancer": (OutputSpace.LOG_ODDS, 2),
        "loan_default": (OutputSpace.LOG_ODDS, 3),
        "synthetic_2": (OutputSpace.PROBABILITY, 2),
        "synthetic_3": (OutputSpace.PROBABILITY, 3),
    }[case.task.name]
    assert (case.task.space, len(case.task.classes)) == expected
    assert case.ensemble.space is case.task.space
    assert 150 <= len(case.X) <= 200


# --- every row ------------------------------------------------------------------------------


def test_timings_split_inference_from_explanation(case: Case) -> None:
    timings: dict[str, float] = {}
    rows, _ = case.ensemble.predict(case.X[:5], timings)
    assert len(rows) == 5
    assert set(timings) == {"infer", "explain"} and min(timings.values()) > 0
    case.ensemble.predict(case.X[:5], timings)  # accumulates over calls
    assert set(timings) == {"infer", "explain"}



def test_tree_members_score_from_their_exact_explanation(case: Case) -> None:
    """Tree members skip the second pass over their trees: TreeSHAP's base plus a row's
    values is the raw output; linear members, whose model pass costs nothing, keep it."""
    for m in case.ensemble.members:
        explainer = m.explainer
        assert explainer.scores_from_shap == (m.algorithm != "logistic_regression"), m.name
        Xt = explainer.preprocess.transform(case.X[:50])
        _, scores = explainer.explain(case.X[:50])
        np.testing.assert_allclose(scores.scores, explainer._raw(Xt), rtol=0, atol=1e-9)


def test_one_result_per_row_and_no_errors(case: Case, predicted: Any) -> None:
    rows, errors = predicted
    assert errors == {}
    assert len(rows) == len(case.X)
    names = [m.name for m in case.task.members]
    for row in rows:
        assert [m.name for m in row.members] == names
        assert all(m.error is None and m.probabilities is not None for m in row.members)


def test_ensemble_explanation_is_exact(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    for i, row in enumerate(rows):
        e = row.explanation
        assert e.base + e.contributions.sum() == pytest.approx(e.output, abs=TOL), f"row {i}"


def test_every_member_explanation_is_exact(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    for i, row in enumerate(rows):
        for m in row.members:
            e = m.explanation
            assert e is not None
            assert e.base + e.contributions.sum() == pytest.approx(e.output, abs=TOL), (
                f"row {i}, member {m.name}")


def test_probabilities_sum_to_one_and_label_is_argmax(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    k = len(case.task.classes)
    for row in rows:
        assert row.probabilities.shape == (k,)
        assert (row.probabilities >= 0).all()
        assert row.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
        assert row.label == int(np.argmax(row.probabilities))
        assert row.explanation.explained_class == row.label
        for m in row.members:
            assert m.probabilities is not None and m.explanation is not None
            assert m.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
            assert m.explanation.explained_class == row.label, "members explain the same class"


def test_output_is_the_documented_function_of_the_probabilities(
        case: Case, predicted: Any) -> None:
    rows, _ = predicted
    space = case.task.space
    for i, row in enumerate(rows):
        c = row.label
        assert row.explanation.output == pytest.approx(
            explained_output(space, row.probabilities, c), abs=TOL), f"row {i}"
        for m in row.members:
            assert m.explanation is not None and m.probabilities is not None
            assert m.explanation.output == pytest.approx(
                explained_output(space, m.probabilities, c), abs=TOL), f"row {i}, {m.name}"


def test_multiclass_rows_explain_every_other_class_exactly(case: Case, predicted: Any) -> None:
    """So a picture of any class can be drawn from the stored prediction."""
    rows, _ = predicted
    k = len(case.task.classes)
    for i, row in enumerate(rows):
        if k == 2:
            assert row.other_classes == []
            continue
        assert sorted(e.explained_class for e in row.other_classes) == sorted(
            set(range(k)) - {row.label})
        for e in row.other_classes:
            assert e.base + e.contributions.sum() == pytest.approx(e.output, abs=TOL)
            assert e.output == pytest.approx(
                explained_output(case.task.space, row.probabilities, e.explained_class),
                abs=TOL), f"row {i}, class {e.explained_class}"


def test_ensemble_pools_members_by_weight(case: Case, predicted: Any) -> None:
    """PROBABILITY: weighted mean; LOG_ODDS: weighted geometric mean, renormalised."""
    rows, _ = predicted
    for row in rows:
        weights = np.array([m.weight for m in row.members]) / sum(m.weight for m in row.members)
        member_p = np.array([m.probabilities for m in row.members])
        if case.task.space is OutputSpace.PROBABILITY:
            expected = weights @ member_p
        else:
            log_p = weights @ np.log(member_p)
            expected = np.exp(log_p - log_p.max())
            expected /= expected.sum()
        np.testing.assert_allclose(row.probabilities, expected, atol=1e-9)


def test_ensemble_explanation_is_the_weighted_sum_of_members(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    for row in rows:
        total = sum(m.weight for m in row.members)
        parts = [(m.weight / total, m.explanation) for m in row.members]
        assert all(e is not None for _, e in parts)
        base = sum(w * e.base for w, e in parts if e is not None)
        contributions = sum(w * e.contributions for w, e in parts if e is not None)
        assert row.explanation.base == pytest.approx(base, abs=1e-9)
        np.testing.assert_allclose(row.explanation.contributions, contributions, atol=1e-9)


def test_base_value_is_the_same_for_every_row(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    by_class: dict[int, set[float]] = {}
    for row in rows:
        by_class.setdefault(row.label, set()).add(round(row.explanation.base, 12))
    assert all(len(bases) == 1 for bases in by_class.values())


def test_one_contribution_per_model_column(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    n = len(case.task.model_columns)
    for row in rows:
        assert row.explanation.contributions.shape == (n,)
        assert np.isfinite(row.explanation.contributions).all()
        for m in row.members:
            assert m.explanation is not None
            assert m.explanation.contributions.shape == (n,)


def test_prediction_sets_come_from_the_calibration(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    proba = np.array([r.probabilities for r in rows])
    np.testing.assert_array_equal(np.array([r.prediction_set for r in rows]),
                                  case.ensemble.calibration.prediction_sets(proba))


def test_predict_agrees_with_the_probability_only_path(case: Case, predicted: Any) -> None:
    """Calibration and evaluation use Ensemble.probabilities; serving uses predict."""
    rows, _ = predicted
    np.testing.assert_allclose(np.array([r.probabilities for r in rows]),
                               case.ensemble.probabilities(case.X), atol=1e-12)


def test_loaded_members_predict_like_the_trained_pipelines(case: Case, predicted: Any) -> None:
    rows, _ = predicted
    for j, trained in enumerate(case.release.members):
        expected = trained.pipeline.predict_proba(case.X)
        got = np.array([r.members[j].probabilities for r in rows])
        # Served probabilities are the softmax of the margins the explanation uses: equal to
        # predict_proba up to float rounding.
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_contributions_land_on_their_own_columns(case: Case) -> None:
    """Folding one-hot children back: each model column receives exactly the SHAP values of
    the transformed columns made from it (found by name, independently of fold_matrix)."""
    X = case.X[:60]
    for loaded in case.ensemble.members:
        explainer = loaded.explainer
        Xt = explainer.preprocess.transform(X)
        _, ms = explainer.explain(X)
        names = explainer.preprocess.get_feature_names_out()
        owner = [int(name.split("__x", 1)[1].split("_", 1)[0]) for name in names]
        raw = np.asarray(explainer.explainer.shap_values(Xt))
        if raw.ndim == 2:  # binary margin model: one log-odds, i.e. class 1 against class 0
            raw = np.stack([np.zeros_like(raw), raw], axis=2)
        expected = np.zeros_like(ms.contributions)
        for t, col in enumerate(owner):
            expected[:, col, :] += raw[:, t, :]
        np.testing.assert_allclose(ms.contributions, expected, atol=1e-9)


# --- failing members ------------------------------------------------------------------------


class BrokenExplainer:
    """A member that breaks inside the machine (e.g. an incompatible library upgrade)."""

    def __init__(self, inner: MemberExplainer) -> None:
        self.inner = inner

    def explain(self, X: np.ndarray, timings: dict[str, float] | None = None
                ) -> tuple[np.ndarray, MemberScores]:
        raise RuntimeError("member is broken")

    def scores(self, X: np.ndarray) -> np.ndarray:
        return self.inner.scores(X)


def with_broken(ensemble: Ensemble, broken: set[str]) -> Ensemble:
    members = [
        LoadedMember(m.name, m.version, m.algorithm, m.weight,
                     BrokenExplainer(m.explainer) if m.name in broken else m.explainer)  # type: ignore[arg-type]
        for m in ensemble.members
    ]
    return Ensemble(ensemble.task, ensemble.release_id, ensemble.version, members,
                    ensemble.calibration)


@pytest.mark.parametrize("which", [0, 1])
def test_other_members_decide_when_one_fails(case: Case, which: int) -> None:
    failing = case.ensemble.members[which]
    survivor = case.ensemble.members[1 - which]
    rows, errors = with_broken(case.ensemble, {failing.name}).predict(case.X)

    assert errors == {failing.name: "RuntimeError: member is broken"}
    assert len(rows) == len(case.X)
    survivor_proba = survivor.explainer.probabilities(case.X)
    for i, row in enumerate(rows):
        by_name = {m.name: m for m in row.members}
        assert set(by_name) == {failing.name, survivor.name}
        gone = by_name[failing.name]
        assert gone.error == "RuntimeError: member is broken"
        assert gone.probabilities is None and gone.explanation is None
        kept = by_name[survivor.name]
        assert kept.error is None
        # the survivor alone decides, with its whole weight
        np.testing.assert_allclose(row.probabilities, survivor_proba[i], atol=1e-9)
        assert row.label == int(np.argmax(survivor_proba[i]))
        e = row.explanation
        assert e.base + e.contributions.sum() == pytest.approx(e.output, abs=TOL)
        assert e.output == pytest.approx(
            explained_output(case.task.space, row.probabilities, row.label), abs=TOL)
        assert kept.explanation is not None
        assert e.output == pytest.approx(kept.explanation.output, abs=1e-9)
        np.testing.assert_allclose(e.contributions, kept.explanation.contributions, atol=1e-9)


def test_all_members_failing_gives_no_rows_and_every_error(case: Case) -> None:
    names = {m.name for m in case.ensemble.members}
    rows, errors = with_broken(case.ensemble, names).predict(case.X)
    assert rows == []
    assert errors == {n: "RuntimeError: member is broken" for n in names}


def test_member_failure_on_real_bad_input_is_contained(case: Case) -> None:
    """A matrix of the wrong width makes every member raise; nothing escapes predict."""
    rows, errors = case.ensemble.predict(case.X[:5, :-1])
    assert rows == []
    assert set(errors) == {m.name for m in case.ensemble.members}
    assert all(err.startswith("ValueError") for err in errors.values())

