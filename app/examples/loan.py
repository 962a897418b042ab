"""A generated loan book: who repays, who pays late, who defaults.

The data are synthetic and reproducible (seed 2026, 6,000 applications). The generative
process, which the models do not see:

1. Applicants: ``income`` log-normal (median about 42,000 a year); ``employment`` salaried
   62 %, self-employed 18 %, unemployed 8 %, retired 12 %; ``home_ownership`` rent 45 %,
   mortgage 35 %, own 20 %; ``purpose`` one of five; ``has_cosigner`` 15 %;
   ``credit_history_years`` 0-40, unknown for 10 % of applicants; ``orders`` and
   ``total_spend`` describe their card use over the last year.
2. The loan: ``loan_amount`` grows with income (a log-normal multiple), ``term_months``
   one of 12, 24, 36, 60, 120.
3. Risk: a latent score rises with the monthly payment burden (the derived
   ``payment_to_income``), unemployment and self-employment, business loans, a short or
   unknown credit history and a high average card spend per order; it falls with a
   cosigner and owning a home. Logistic noise is added.
4. Outcome: score below the first cut -> ``repaid`` (about 70 %), below the second ->
   ``late`` (about 18 %), else ``default`` (about 12 %).
5. A changing market (``generate(long_terms=f)``, not in the training book): a share ``f``
   of loans run 15, 20 or 30 years, terms the book never offered. Their risk grows with
   every year beyond ten (+0.3 per year), which a model that has only seen terms of up to
   ten years cannot know: it sees a small monthly burden and predicts ``repaid``. Used to
   test drift, routing of out-of-distribution inputs, and learning from reviewers.

The derived features below are the one feature layer: the same functions run in training,
in batch and online serving. Each takes arrays and returns an array.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEED = 2026
ROWS = 6000
INCOME_FLOOR = 1000.0  # a zero income must not make ratios infinite
EMPLOYMENT = ["salaried", "self_employed", "unemployed", "retired"]
HOME = ["rent", "mortgage", "own"]
LONG_TERMS = [180, 240, 360]
LONG_TERM_RISK_PER_MONTH = 0.025  # +0.3 per year beyond ten
PURPOSE = ["car", "home_improvement", "debt_consolidation", "business", "education"]


def avg_spend(total_spend: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Average card spend per order; 0 when there were no orders."""
    orders = np.asarray(orders, dtype=float)
    total = np.asarray(total_spend, dtype=float)
    return np.divide(total, orders, out=np.zeros_like(total), where=orders > 0)


def payment_to_income(
    loan_amount: np.ndarray, term_months: np.ndarray, income: np.ndarray
) -> np.ndarray:
    """Monthly instalment (no interest) over monthly income, income floored at 1,000 a year."""
    monthly_income = np.maximum(np.asarray(income, dtype=float), INCOME_FLOOR) / 12
    return (
        np.asarray(loan_amount, dtype=float) / np.asarray(term_months, dtype=float) / monthly_income
    )


def generate(
    rows: int = ROWS, seed: int = SEED, shift: float = 0.0, long_terms: float = 0.0
) -> pd.DataFrame:
    """The documented data set; ``shift`` > 0 moves applicants towards riskier profiles,
    ``long_terms`` > 0 offers loans longer than ten years (step 5 above)."""
    rng = np.random.default_rng(seed)
    income = np.round(rng.lognormal(np.log(42_000) - shift * 0.4, 0.5, rows), -2)
    employment = rng.choice(
        EMPLOYMENT, rows, p=[0.62 - shift * 0.2, 0.18, 0.08 + shift * 0.2, 0.12]
    )
    home = rng.choice(HOME, rows, p=[0.45, 0.35, 0.20])
    purpose = rng.choice(PURPOSE, rows, p=[0.3, 0.2, 0.25, 0.15, 0.1])
    cosigner = rng.random(rows) < 0.15
    history = np.round(rng.uniform(0, 40, rows), 1)
    history_known = rng.random(rows) >= 0.10
    orders = rng.poisson(40, rows)
    total_spend = np.round(orders * rng.lognormal(np.log(35), 0.6, rows), 2)
    loan = np.clip(np.round(income * rng.lognormal(np.log(0.35), 0.5, rows), -2), 500, 500_000)
    term = rng.choice([12, 24, 36, 60, 120], rows, p=[0.1, 0.2, 0.35, 0.25, 0.1])
    # A second generator, so that the book itself (long_terms = 0) never changes.
    market = np.random.default_rng([seed, 1])
    long_loan = market.random(rows) < long_terms
    term = np.where(long_loan, market.choice(LONG_TERMS, rows), term)
    burden = payment_to_income(loan, term, income)
    score = (
        -2.2
        + 9.0 * burden
        + 1.6 * (employment == "unemployed")
        + 0.6 * (employment == "self_employed")
        + 0.7 * (purpose == "business")
        - 0.8 * cosigner
        - 0.5 * (home == "own")
        - 0.04 * np.where(history_known, history, 0.0)
        + 0.5 * ~history_known
        + 0.012 * (avg_spend(total_spend, orders) - 35)
        + LONG_TERM_RISK_PER_MONTH * np.maximum(term - 120, 0)
        + rng.logistic(0, 0.6, rows)
    )
    outcome = np.where(score < 0.0, "repaid", np.where(score < 1.1, "late", "default"))
    return pd.DataFrame(
        {
            "income": income,
            "loan_amount": loan,
            "term_months": term,
            "credit_history_years": np.where(history_known, history, np.nan),
            "employment": employment,
            "home_ownership": home,
            "purpose": purpose,
            "has_cosigner": cosigner,
            "total_spend": total_spend,
            "orders": orders,
            "outcome": outcome,
        }
    )


def load() -> pd.DataFrame:
    """The training data of the ``loan_default`` task."""
    return generate()
