"""A data scientist's notebook, run as its own process: fits a scikit-learn pipeline on the
loan book (derived features computed by hand, as a notebook would) and writes it to a skops
file. Nothing is shared with the test that runs it but the file.

    python -m tests.support.notebook KIND OUT.skops
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from app.examples.loan import avg_spend, load, payment_to_income

CLASSES = ["repaid", "late", "default"]  # the task's order; scikit-learn would sort them
NUMERIC = ["income", "loan_amount", "term_months", "credit_history_years", "has_cosigner",
           "total_spend", "orders", "avg_spend", "payment_to_income"]
CATEGORICAL = ["employment", "home_ownership", "purpose"]


class Clipper(TransformerMixin, BaseEstimator):
    """A home-made step: skops does not know it, so Arbiter must refuse the file."""

    def fit(self, X: Any, y: Any = None) -> Clipper:
        return self

    def transform(self, X: Any) -> Any:
        return np.clip(X, -5, 5)


def _frame() -> tuple[pd.DataFrame, pd.Series]:
    frame = load()
    frame["avg_spend"] = avg_spend(frame.total_spend.to_numpy(), frame.orders.to_numpy())
    frame["payment_to_income"] = payment_to_income(
        frame.loan_amount.to_numpy(), frame.term_months.to_numpy(), frame.income.to_numpy())
    frame["has_cosigner"] = frame.has_cosigner.astype(float)
    outcome = frame.pop("outcome")
    return frame, outcome.map({c: i for i, c in enumerate(CLASSES)})


def _preprocess(numeric: list[str]) -> ColumnTransformer:
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
    ])


def build(kind: str) -> Any:
    """A fitted estimator of the given kind."""
    X, y = _frame()
    model: Any = {
        "boosted": HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=8,
                                                  random_state=0),
        "logistic": LogisticRegression(C=0.5, max_iter=3000),
        "svc": SVC(),
    }.get(kind, LogisticRegression(max_iter=3000))
    numeric = NUMERIC
    if kind == "wrong_columns":  # the notebook renamed a column
        X = X.rename(columns={"orders": "order_count"})
        numeric = [c if c != "orders" else "order_count" for c in NUMERIC]
    if kind == "wrong_classes":  # fitted on the label strings: sorted, not the task's order
        y = y.map(dict(enumerate(CLASSES)))
    steps: list[Any] = [_preprocess(numeric)]
    if kind == "untrusted":
        steps.append(Clipper())
    return make_pipeline(*steps, model).fit(X[numeric + CATEGORICAL], y)


def main() -> None:
    kind, out = sys.argv[1], sys.argv[2]
    pipeline: Pipeline = build(kind)
    sio.dump(pipeline, out)


if __name__ == "__main__":
    main()
