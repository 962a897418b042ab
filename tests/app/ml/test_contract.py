"""The feature contract of the loan_default task: every kind of problem, all reported at
once, and the model matrix computed by the task's own derived-feature functions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from app.errors import FieldProblem, InputValidationError
from app.examples.loan import avg_spend, generate, payment_to_income
from app.ml.contract import frame_to_matrix, input_problems, to_matrix, validate_inputs
from app.ml.task import TaskSpec


def good_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "income": 48_000,
        "loan_amount": 12_000.0,
        "term_months": 36,
        "credit_history_years": 7.5,
        "employment": "salaried",
        "home_ownership": "mortgage",
        "purpose": "car",
        "has_cosigner": False,
        "total_spend": 2_400.0,
        "orders": 60,
    }
    row.update(changes)
    return row


def without(field: str) -> dict[str, Any]:
    row = good_row()
    del row[field]
    return row


def kinds(problems: list[FieldProblem]) -> list[tuple[str, str]]:
    return [(p.field, p.problem) for p in problems]


def test_a_good_row_has_no_problems(loan_task: TaskSpec) -> None:
    assert input_problems(loan_task, good_row()) == []
    assert validate_inputs(loan_task, [good_row()]) == [good_row()]


def test_missing_required_field(loan_task: TaskSpec) -> None:
    problems = input_problems(loan_task, without("income"))
    assert kinds(problems) == [("income", "MISSING")]
    assert problems[0].index is None
    assert "income" in problems[0].message


def test_null_required_field_is_missing(loan_task: TaskSpec) -> None:
    assert kinds(input_problems(loan_task, good_row(employment=None))) == [
        ("employment", "MISSING")]


@pytest.mark.parametrize("row", [without("credit_history_years"),
                                 good_row(credit_history_years=None)],
                         ids=["absent", "null"])
def test_optional_field_may_be_absent_or_null(loan_task: TaskSpec, row: dict[str, Any]) -> None:
    assert input_problems(loan_task, row) == []
    matrix = to_matrix(loan_task, validate_inputs(loan_task, [row]))
    col = loan_task.model_columns.index("credit_history_years")
    assert math.isnan(matrix[0, col])
    others = np.delete(matrix[0], col)
    assert np.isfinite(others).all()


@pytest.mark.parametrize(
    ("field", "value", "expected_in_message"),
    [
        ("income", True, "expected a number, got bool"),
        ("income", False, "expected a number, got bool"),
        ("income", "48000", "expected a number, got str"),
        ("income", [48_000], "expected a number, got list"),
        ("has_cosigner", 1, "expected true or false, got int"),
        ("has_cosigner", 0.0, "expected true or false, got float"),
        ("has_cosigner", "true", "expected true or false, got str"),
        ("employment", 1, "expected a string category, got int"),
        ("employment", True, "expected a string category, got bool"),
    ],
)
def test_wrong_type(loan_task: TaskSpec, field: str, value: Any, expected_in_message: str) -> None:
    problems = input_problems(loan_task, good_row(**{field: value}))
    assert kinds(problems) == [(field, "WRONG_TYPE")]
    assert problems[0].message == f"{field}: {expected_in_message}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, -(10**400)])
def test_not_finite(loan_task: TaskSpec, value: float) -> None:
    problems = input_problems(loan_task, good_row(loan_amount=value))
    assert kinds(problems) == [("loan_amount", "NOT_FINITE")]
    assert "finite" in problems[0].message


@pytest.mark.parametrize(
    ("value", "words"),
    [(499, "below the minimum 500"), (500_001, "above the maximum 500000"),
     (499.99, "below the minimum 500")],
)
def test_out_of_range(loan_task: TaskSpec, value: float, words: str) -> None:
    problems = input_problems(loan_task, good_row(loan_amount=value))
    assert kinds(problems) == [("loan_amount", "OUT_OF_RANGE")]
    assert words in problems[0].message


@pytest.mark.parametrize("value", [500, 500_000, 500.0])
def test_range_bounds_are_inclusive(loan_task: TaskSpec, value: float) -> None:
    assert input_problems(loan_task, good_row(loan_amount=value)) == []


def test_unknown_category(loan_task: TaskSpec) -> None:
    problems = input_problems(loan_task, good_row(purpose="holiday"))
    assert kinds(problems) == [("purpose", "UNKNOWN_CATEGORY")]
    assert "'holiday'" in problems[0].message
    for allowed in loan_task.feature("purpose").categories:
        assert allowed in problems[0].message


def test_categories_are_case_sensitive(loan_task: TaskSpec) -> None:
    assert kinds(input_problems(loan_task, good_row(purpose="Car"))) == [
        ("purpose", "UNKNOWN_CATEGORY")]


def test_unknown_field(loan_task: TaskSpec) -> None:
    problems = input_problems(loan_task, good_row(favourite_colour="blue"))
    assert kinds(problems) == [("favourite_colour", "UNKNOWN_FIELD")]
    assert "loan_default" in problems[0].message


def test_derived_feature_is_not_an_input(loan_task: TaskSpec) -> None:
    assert kinds(input_problems(loan_task, good_row(avg_spend=40.0))) == [
        ("avg_spend", "UNKNOWN_FIELD")]


@pytest.mark.parametrize("raw", [[1, 2], "income=1", 42, None, [good_row()]])
def test_not_an_object(loan_task: TaskSpec, raw: Any) -> None:
    problems = input_problems(loan_task, raw)
    assert kinds(problems) == [("", "NOT_AN_OBJECT")]


def test_all_problems_are_reported_at_once(loan_task: TaskSpec) -> None:
    raw = good_row(income=True, loan_amount=math.inf, term_months=1, purpose="holiday",
                   has_cosigner=1, shoe_size=44)
    del raw["employment"]
    with pytest.raises(InputValidationError) as info:
        validate_inputs(loan_task, [raw])
    error = info.value
    assert sorted(kinds(error.problems)) == sorted([
        ("shoe_size", "UNKNOWN_FIELD"),
        ("income", "WRONG_TYPE"),
        ("loan_amount", "NOT_FINITE"),
        ("term_months", "OUT_OF_RANGE"),
        ("employment", "MISSING"),
        ("purpose", "UNKNOWN_CATEGORY"),
        ("has_cosigner", "WRONG_TYPE"),
    ])
    assert all(p.index is None for p in error.problems)
    assert "(and 6 more)" in str(error)
    assert "loan_default" in str(error)
    fields = error.extensions()["fields"]
    assert {f["field"] for f in fields} == {
        "shoe_size", "income", "loan_amount", "term_months", "employment", "purpose",
        "has_cosigner"}
    assert all(set(f) == {"field", "problem", "message", "index"} for f in fields)


def test_batch_problems_carry_their_index(loan_task: TaskSpec) -> None:
    rows = [good_row(), good_row(income=-1), good_row(), "not a row",
            good_row(orders=None, purpose="holiday")]
    with pytest.raises(InputValidationError) as info:
        validate_inputs(loan_task, rows, batch=True)
    assert sorted((p.index, p.field, p.problem) for p in info.value.problems) == [
        (1, "income", "OUT_OF_RANGE"),
        (3, "", "NOT_AN_OBJECT"),
        (4, "orders", "MISSING"),
        (4, "purpose", "UNKNOWN_CATEGORY"),
    ]
    assert [f["index"] for f in info.value.extensions()["fields"]] == [1, 3, 4, 4]


def test_a_good_batch_passes_and_returns_copies(loan_task: TaskSpec) -> None:
    rows = [good_row(), good_row(orders=0, total_spend=0.0)]
    validated = validate_inputs(loan_task, rows, batch=True)
    assert validated == rows
    assert all(v is not r for v, r in zip(validated, rows, strict=True))


# --- the model matrix --------------------------------------------------------------------


def test_to_matrix_columns_codes_and_derived_features(loan_task: TaskSpec) -> None:
    rows = [
        good_row(),
        good_row(employment="retired", home_ownership="own", purpose="education",
                 has_cosigner=True, total_spend=350.0, orders=0, income=0),
    ]
    matrix = to_matrix(loan_task, validate_inputs(loan_task, rows))
    assert matrix.shape == (2, len(loan_task.model_columns))
    assert matrix.dtype == np.float64
    m = [dict(zip(loan_task.model_columns, r, strict=True)) for r in matrix]

    assert m[0]["income"] == 48_000.0
    assert m[0]["term_months"] == 36.0
    assert m[0]["credit_history_years"] == 7.5
    # categories become their index in the declared categories
    assert (m[0]["employment"], m[0]["home_ownership"], m[0]["purpose"]) == (0.0, 1.0, 0.0)
    assert (m[1]["employment"], m[1]["home_ownership"], m[1]["purpose"]) == (3.0, 2.0, 4.0)
    assert (m[0]["has_cosigner"], m[1]["has_cosigner"]) == (0.0, 1.0)
    # derived features, by the task's functions
    assert m[0]["avg_spend"] == pytest.approx(2_400.0 / 60)
    assert m[1]["avg_spend"] == 0.0, "no orders: the average spend is 0, not inf or nan"
    assert m[0]["payment_to_income"] == pytest.approx(12_000 / 36 / (48_000 / 12))
    # a zero income is floored at 1,000 a year so the ratio stays finite
    assert m[1]["payment_to_income"] == pytest.approx(12_000 / 36 / (1_000 / 12))
    assert np.isfinite(matrix).all()


def test_derived_columns_equal_the_task_functions(loan_task: TaskSpec) -> None:
    frame = generate(rows=300, seed=5)
    matrix = frame_to_matrix(loan_task, frame)
    cols = loan_task.model_columns
    np.testing.assert_array_equal(
        matrix[:, cols.index("avg_spend")],
        avg_spend(frame["total_spend"].to_numpy(), frame["orders"].to_numpy()))
    np.testing.assert_array_equal(
        matrix[:, cols.index("payment_to_income")],
        payment_to_income(frame["loan_amount"].to_numpy(), frame["term_months"].to_numpy(),
                          frame["income"].to_numpy()))


def test_serving_and_training_build_the_same_matrix(loan_task: TaskSpec) -> None:
    """One feature layer: JSON inputs (to_matrix) and the training frame (frame_to_matrix)
    give the same matrix, the unknown credit histories included."""
    frame = generate(rows=400, seed=17)
    records = []
    for rec in frame.drop(columns=["outcome"]).to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in rec.items():
            if isinstance(value, float) and math.isnan(value):
                continue  # an unknown optional value is left out of the JSON
            row[str(key)] = value.item() if isinstance(value, np.generic) else value
        records.append(row)
    served = to_matrix(loan_task, validate_inputs(loan_task, records, batch=True))
    trained = frame_to_matrix(loan_task, frame)
    np.testing.assert_array_equal(np.isnan(served), np.isnan(trained))
    np.testing.assert_allclose(served, trained, rtol=0, atol=0)
    assert np.isnan(served[:, loan_task.model_columns.index("credit_history_years")]).any()
