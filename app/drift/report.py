"""Drift: how far recent inputs and predictions have moved from what a release learned from.

Plain functions over NumPy arrays. The reference of a feature is computed once, when a
training snapshot is taken (``feature_reference``), and of the predictions when a release
is stored (``prediction_reference``, on its held-out rows); ``drift_report`` compares
recent predictions with both.

The test follows the feature's type and the number of recent values, as Evidently's
defaults do: with at most ``SMALL_SAMPLE`` values a hypothesis test (two-sample
Kolmogorov-Smirnov for numbers, chi-squared for categories; drift when p < 0.05), above it
a distance (Wasserstein normalised by the reference's standard deviation for numbers,
Jensen-Shannon for categories; drift when > 0.1), since with thousands of rows every
p-value is tiny and a distance says how much, not merely whether. Evidently counts the
*reference* rows; here references always hold thousands of rows, so the recent sample
decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

from app.ml.drift_settings import DriftSettings, DriftTest, FeatureDrift
from app.ml.task import FeatureType, TaskSpec

REFERENCE_SAMPLE = 5000  # values kept per numeric feature (a deterministic subsample)
REFERENCE_SEED = 0
SMALL_SAMPLE = 1000  # at most this many recent values: a hypothesis test, else a distance
DEFAULT_THRESHOLDS = {
    DriftTest.KS: 0.05,
    DriftTest.CHI2: 0.05,
    DriftTest.WASSERSTEIN: 0.1,
    DriftTest.JENSEN_SHANNON: 0.1,
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RATE_BUCKETS = 12  # the window is cut into this many buckets for routing/overturn rates
WORST_STD = 1e-3  # a constant reference column: normalise by this instead of zero
PREDICTED_CLASS = "predicted_class"
PROBABILITY = "probability"


class Verdict(StrEnum):
    """What a drift test (of one feature, or of the whole report) concluded."""

    DRIFTED = "DRIFTED"
    NOT_DRIFTED = "NOT_DRIFTED"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


# ---- references -------------------------------------------------------------------------


def _short(value: float) -> float:
    return float(f"{value:.6g}")  # six significant digits keep the stored JSON small


def numeric_summary(values: np.ndarray, missing: float) -> dict[str, Any]:
    """A bounded, deterministic sample of a numeric column plus its summary."""
    if len(values) > REFERENCE_SAMPLE:
        rng = np.random.default_rng(REFERENCE_SEED)
        values = values[np.sort(rng.choice(len(values), REFERENCE_SAMPLE, replace=False))]
    summary: dict[str, Any] = {"kind": "numeric", "rows": len(values), "missing": missing,
                               "sample": [_short(v) for v in values.tolist()]}
    if len(values):
        summary.update(mean=float(values.mean()), std=float(values.std()),
                       quantiles={f"p{round(q * 100):02d}": float(np.quantile(values, q))
                                  for q in QUANTILES})
    return summary


def category_summary(values: Sequence[str], categories: Sequence[str],
                     missing: float) -> dict[str, Any]:
    """Counts of every declared category (zero included)."""
    counts = {c: 0 for c in categories}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return {"kind": "categorical", "rows": len(values), "missing": missing, "counts": counts}


def _categories(task: TaskSpec, name: str) -> tuple[str, ...]:
    feature = task.feature(name)
    return feature.categories if feature.type is FeatureType.CATEGORICAL else ("false", "true")


def input_columns(task: TaskSpec, X: np.ndarray) -> dict[str, np.ndarray]:
    """The input features of a model matrix (``app.ml.contract.to_matrix`` order), numbers as
    floats (NaN when missing), categories and booleans as their names (``""`` if missing)."""
    out: dict[str, np.ndarray] = {}
    for j, f in enumerate(task.features):
        column = np.asarray(X[:, j], dtype=float)
        if f.type is FeatureType.NUMERIC:
            out[f.name] = column
            continue
        names = np.asarray((*_categories(task, f.name), ""), dtype=object)
        codes = np.where(np.isnan(column), len(names) - 1, column).astype(int)
        out[f.name] = names[codes]
    return out


def _summarise(task: TaskSpec, name: str, column: np.ndarray) -> dict[str, Any]:
    if task.feature(name).type is FeatureType.NUMERIC:
        present = column[~np.isnan(column)]
        return numeric_summary(present, _missing(len(column), len(present)))
    present_names = [str(v) for v in column if v != ""]
    return category_summary(present_names, _categories(task, name),
                            _missing(len(column), len(present_names)))


def _missing(total: int, present: int) -> float:
    return 0.0 if total == 0 else (total - present) / total


def feature_reference(task: TaskSpec, X: np.ndarray) -> dict[str, Any]:
    """Per input feature of a model matrix: a numeric sample and summary, or category counts."""
    columns = input_columns(task, X)
    return {"rows": len(X),
            "features": {name: _summarise(task, name, col) for name, col in columns.items()}}


def prediction_reference(task: TaskSpec, proba: np.ndarray) -> dict[str, Any]:
    """The predicted classes (counts) and top probabilities (sample) of a release on its
    held-out rows: what its predictions looked like when it was made."""
    labels = [task.classes[i] for i in proba.argmax(axis=1)]
    return {"rows": len(proba),
            PREDICTED_CLASS: category_summary(labels, task.classes, 0.0),
            PROBABILITY: numeric_summary(proba.max(axis=1).astype(float), 0.0)}


# ---- the tests ----------------------------------------------------------------------------


def choose_test(numeric: bool, sample_size: int,
                override: FeatureDrift | None = None) -> tuple[DriftTest, float]:
    """The test and threshold for a feature: the override's when given, else by type and
    by the number of recent values."""
    small = sample_size <= SMALL_SAMPLE
    if numeric:
        test = DriftTest.KS if small else DriftTest.WASSERSTEIN
    else:
        test = DriftTest.CHI2 if small else DriftTest.JENSEN_SHANNON
    if override is not None and override.test is not None:
        test = override.test
    threshold = DEFAULT_THRESHOLDS[test]
    if override is not None and override.threshold is not None:
        threshold = override.threshold
    return test, threshold


def ks_p_value(reference: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov p-value."""
    return float(stats.ks_2samp(reference, current).pvalue)


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein distance in units of the reference's standard deviation."""
    scale = max(float(np.std(reference)), WORST_STD)
    return float(stats.wasserstein_distance(reference, current) / scale)


def _frequencies(reference: Mapping[str, int], current: Mapping[str, int]) -> tuple[
        list[str], np.ndarray, np.ndarray]:
    keys = list(dict.fromkeys([*reference, *current]))
    return (keys, np.array([reference.get(k, 0) for k in keys], float),
            np.array([current.get(k, 0) for k in keys], float))


def chi2_p_value(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """Chi-squared goodness of fit of the recent counts to the reference's proportions
    (half a count added to each reference category, so an unseen one is not impossible)."""
    _, ref, cur = _frequencies(reference, current)
    expected = (ref + 0.5) / (ref.sum() + 0.5 * len(ref)) * cur.sum()
    return float(stats.chisquare(cur, expected).pvalue)


def jensen_shannon(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """Jensen-Shannon distance (natural log: 0 to 0.83) between the two frequencies."""
    _, ref, cur = _frequencies(reference, current)
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


@dataclass
class FeatureResult:
    """One feature's (or one prediction output's) drift."""

    feature: str
    kind: str  # numeric or categorical (booleans are two categories)
    test: str | None
    statistic: float | None
    threshold: float | None
    drifted: bool
    sample_size: int
    reference_size: int
    status: str = Verdict.NOT_DRIFTED  # or DRIFTED, INSUFFICIENT_DATA
    p_value: float | None = None
    current_mean: float | None = None
    reference_mean: float | None = None


def compare(name: str, reference: Mapping[str, Any], current: Sequence[Any],
            min_rows: int, override: FeatureDrift | None = None) -> FeatureResult:
    """Test one feature's recent values (``None``/NaN/"" = missing) against its reference."""
    numeric = reference["kind"] == "numeric"
    if numeric:
        cur = np.array([np.nan if v is None else float(v) for v in current], float)
        cur = cur[~np.isnan(cur)]
        ref = np.asarray(reference["sample"], float)
        n, n_ref = len(cur), len(ref)
    else:
        counts: dict[str, int] = {}
        for v in current:
            if v is not None and v != "":
                counts[str(v)] = counts.get(str(v), 0) + 1
        ref_counts: dict[str, int] = dict(reference["counts"])
        n, n_ref = sum(counts.values()), sum(ref_counts.values())
    result = FeatureResult(name, reference["kind"], None, None, None, False, n, n_ref)
    if n < min_rows or n_ref < min_rows:
        result.status = Verdict.INSUFFICIENT_DATA
        return result
    test, threshold = choose_test(numeric, n, override)
    if numeric:
        statistic = ks_p_value(ref, cur) if test is DriftTest.KS else wasserstein_normed(ref, cur)
        result.current_mean, result.reference_mean = float(cur.mean()), float(ref.mean())
    else:
        statistic = (chi2_p_value(ref_counts, counts) if test is DriftTest.CHI2
                     else jensen_shannon(ref_counts, counts))
    drifted = statistic < threshold if test.p_value else statistic > threshold
    result.test, result.statistic, result.threshold = test.value, statistic, threshold
    result.p_value = statistic if test.p_value else None
    result.drifted = bool(drifted)
    result.status = Verdict.DRIFTED if drifted else Verdict.NOT_DRIFTED
    return result


# ---- rates over time --------------------------------------------------------------------


@dataclass
class RateBucket:
    """A share of the predictions made in ``[start, start + bucket)``: ``count`` is how
    many were counted, ``rate`` is None when there were none."""

    start: datetime
    rate: float | None
    count: int


def bucket_rates(start: datetime, end: datetime, times: Sequence[datetime],
                 hits: Sequence[bool], counted: Sequence[bool]) -> list[RateBucket]:
    """Per bucket of the window, the share of ``hits`` among the ``counted`` rows."""
    width = (end - start) / RATE_BUCKETS
    hit = np.zeros(RATE_BUCKETS)
    total = np.zeros(RATE_BUCKETS, int)
    for t, h, c in zip(times, hits, counted, strict=True):
        if not c or t < start:
            continue
        i = min(int((t - start) / width), RATE_BUCKETS - 1)
        total[i] += 1
        hit[i] += bool(h)
    return [RateBucket(start + width * i, float(hit[i] / total[i]) if total[i] else None,
                       int(total[i])) for i in range(RATE_BUCKETS)]


# ---- the report -------------------------------------------------------------------------


@dataclass
class Recent:
    """The recent predictions of a task, oldest first: what the report compares."""

    inputs: list[dict[str, Any]]
    created_at: list[datetime]
    routes: list[str]
    labels: list[str]
    final_labels: list[str | None]
    confidence: list[float]
    live: list[bool]  # made by the release whose reference is compared
    outcomes: list[str | None] = field(default_factory=list)  # recorded true labels


RATE_SERIES = ("routing_rate", "overturn_rate", "outcome_error_rate")


@dataclass
class DriftReport:
    """A task's drift over a window against its LIVE release's reference."""

    task: str
    release: int
    window: str
    computed_at: datetime
    since: datetime
    verdict: str
    drifted: bool
    rows: int
    share: float  # share of tested features that drifted
    share_threshold: float
    message: str
    features: list[FeatureResult] = field(default_factory=list)
    prediction: list[FeatureResult] = field(default_factory=list)
    prediction_drifted: bool = False
    routing_rate: list[RateBucket] = field(default_factory=list)
    overturn_rate: list[RateBucket] = field(default_factory=list)
    outcome_error_rate: list[RateBucket] = field(default_factory=list)

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        for key in ("computed_at", "since"):
            raw[key] = raw[key].isoformat()
        for key in RATE_SERIES:
            raw[key] = [{**b, "start": b["start"].isoformat()} for b in raw[key]]
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DriftReport:
        def buckets(items: list[dict[str, Any]]) -> list[RateBucket]:
            return [RateBucket(datetime.fromisoformat(b["start"]), b["rate"], b["count"])
                    for b in items]
        return cls(**{**raw,
                      "computed_at": datetime.fromisoformat(raw["computed_at"]),
                      "since": datetime.fromisoformat(raw["since"]),
                      "features": [FeatureResult(**f) for f in raw["features"]],
                      "prediction": [FeatureResult(**f) for f in raw["prediction"]],
                      # reports stored before a series existed lack it
                      **{key: buckets(raw.get(key, [])) for key in RATE_SERIES}})


def drift_report(task: TaskSpec, release: int, features_ref: Mapping[str, Any],
                 predictions_ref: Mapping[str, Any] | None, recent: Recent,
                 settings: DriftSettings, window: str, now: datetime,
                 seconds: int) -> DriftReport:
    """Compare the recent predictions with the references; insufficient data when fewer
    than ``settings.min_rows`` recent predictions exist (no test is run on them)."""
    since = now - timedelta(seconds=seconds)
    report = DriftReport(task.name, release, window, now, since, Verdict.NOT_DRIFTED, False,
                         len(recent.inputs), 0.0, settings.share, "")
    report.routing_rate = bucket_rates(since, now, recent.created_at,
                                       [r == "REVIEW" for r in recent.routes],
                                       [True] * len(recent.routes))
    reviewed = [r == "REVIEW" and f is not None
                for r, f in zip(recent.routes, recent.final_labels, strict=True)]
    report.overturn_rate = bucket_rates(since, now, recent.created_at,
                                        [f != m for f, m in zip(recent.final_labels,
                                                                recent.labels, strict=True)],
                                        reviewed)
    outcomes = recent.outcomes or [None] * len(recent.labels)
    report.outcome_error_rate = bucket_rates(
        since, now, recent.created_at,
        [o is not None and o != m for o, m in zip(outcomes, recent.labels, strict=True)],
        [o is not None for o in outcomes])
    if len(recent.inputs) < settings.min_rows:
        report.verdict = Verdict.INSUFFICIENT_DATA
        report.message = (f"insufficient data: {len(recent.inputs)} predictions in the last "
                          f"{window}, at least {settings.min_rows} needed (drift.min_rows)")
        return report
    references = features_ref["features"]
    for f in task.features:
        override = settings.features.get(f.name)
        if override is not None and override.ignore:
            continue
        values = [row.get(f.name) for row in recent.inputs]
        if f.type is FeatureType.BOOLEAN:
            values = [None if v is None else ("true" if v else "false") for v in values]
        report.features.append(compare(f.name, references[f.name], values,
                                       settings.min_rows, override))
    tested = [r for r in report.features if r.status != Verdict.INSUFFICIENT_DATA]
    report.share = len(report.drifted_features) / len(tested) if tested else 0.0
    report.drifted = bool(tested) and report.share >= settings.share
    report.verdict = Verdict.DRIFTED if report.drifted else Verdict.NOT_DRIFTED
    report.message = (f"{len(report.drifted_features)} of {len(tested)} features drifted "
                      f"(share {report.share:.2f}, threshold {settings.share:g})")
    if predictions_ref is not None:
        report.prediction = _prediction_drift(recent, predictions_ref, settings.min_rows)
        report.prediction_drifted = any(p.drifted for p in report.prediction)
    else:
        report.message += "; no prediction reference (release stored before drift references)"
    return report


def _prediction_drift(recent: Recent, reference: Mapping[str, Any],
                      min_rows: int) -> list[FeatureResult]:
    """The LIVE release's recent predicted classes and top probabilities against its own
    predictions on its held-out rows."""
    labels = [lb for lb, live in zip(recent.labels, recent.live, strict=True) if live]
    confidence = [c for c, live in zip(recent.confidence, recent.live, strict=True) if live]
    return [compare(PREDICTED_CLASS, reference[PREDICTED_CLASS], labels, min_rows),
            compare(PROBABILITY, reference[PROBABILITY], confidence, min_rows)]
