"""Out-of-distribution detection: how far an input lies from the rows the members trained on.

Numeric columns (inputs and derived features) are standardised robustly: minus the training
median, over the training IQR / 1.349 (the standard deviation, for normal data), so a few
extreme training rows do not hide the next one. A non-negative, right-skewed column (income,
an area) is first put on a log scale, ``asinh(x / median)`` (linear near 0, so zeros are
fine), when that makes its training values more symmetric: an ellipse fits them better, and a
value in the wrong unit or out of proportion with the others then stands out. A missing value
is imputed with the median (z = 0).

The score is the Mahalanobis distance ``d = sqrt(z' P z)``, P the inverse of the Ledoit-Wolf
shrunk second moment of the training z (shrinkage keeps P stable with few rows or collinear
columns such as derived features). It sees values that are extreme on their own and
combinations that break the training correlations (a large loan on a small income). To say
why a row is far, a finding names the features with the largest robust z-scores: unlike the
exact split ``d^2 = sum_j z_j (P z)_j``, whose parts turn negative for an extreme value that
is correlated with another one (a high income next to a high loan), a z-score reads plainly.
Categorical and boolean columns are checked apart: a level seen in fewer than
``RARE_LEVEL_FRACTION`` of the training rows is out of distribution on its own.

The threshold is the ``quantile`` of held-out scores, with the rank rule of split conformal
prediction, so an in-distribution row scores above it with probability about ``1 - quantile``.
Held-out scores are those of the calibration split plus, because a small calibration split
cannot pin down a 99.5 % quantile (breast cancer has 114 rows), out-of-fold scores of the
training split (``CROSS_FIT_FOLDS`` detectors, each fitted without the fold it scores).
Everything is plain JSON, and scoring is numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold

from app.access.pii import REDACTED, personal_columns
from app.ml.task import FeatureType, TaskSpec

IQR_TO_SD = 1.349  # the interquartile range of a normal distribution, in standard deviations
MAD_TO_SD = 1.4826  # likewise for the median absolute deviation
RARE_LEVEL_FRACTION = 0.001
SKEW_GAIN = 0.1  # octile skewness a log scale must remove before a column gets one
TOP_FEATURES = 3
CROSS_FIT_FOLDS = 5
METHOD = "robust_mahalanobis_ledoit_wolf"


@dataclass(frozen=True)
class FeatureDeviation:
    """How far one numeric value of a row lies from the training data."""

    name: str
    value: float | None  # None when the optional input was missing
    median: float  # of the training split, in the column's own unit
    z: float  # robust standard deviations from the median
    log_scale: bool  # z is measured on the log scale

    def describe(self, hidden: frozenset[str] = frozenset()) -> str:
        value = "missing" if self.value is None else f"{self.value:.6g}"
        value = REDACTED if self.name in hidden else value
        unit = "robust SD on a log scale" if self.log_scale else "robust SD"
        return f"{self.name}={value} (training median {self.median:.6g}, {self.z:+.1f} {unit})"


@dataclass(frozen=True)
class RareLevel:
    """A category (or boolean value) the training split held never or almost never."""

    name: str
    level: str
    count: int  # training rows with this level
    rows: int  # training rows

    def describe(self, hidden: frozenset[str] = frozenset()) -> str:
        level = REDACTED if self.name in hidden else self.level
        return f"{self.name}={level!r} was seen in {self.count} of {self.rows} training rows"


@dataclass(frozen=True)
class OodFinding:
    """How far one row is from the training data, and whether that is too far."""

    score: float
    threshold: float | None  # None: the check is switched off (quantile 1.0)
    quantile: float
    features: tuple[FeatureDeviation, ...]  # the largest deviations, largest first
    rare_levels: tuple[RareLevel, ...]

    @property
    def too_far(self) -> bool:
        return self.threshold is not None and self.score > self.threshold

    @property
    def out_of_distribution(self) -> bool:
        return self.threshold is not None and (self.too_far or bool(self.rare_levels))

    hidden: frozenset[str] = field(default=frozenset(), compare=False)  # told as REDACTED

    def describe(self) -> str:
        """A sentence a reviewer can act on: the numbers and the features behind them
        (personal values as REDACTED: reasons are shown to whoever sees the prediction)."""
        if self.threshold is None:
            return f"distance {self.score:.2f} from the training data (the check is off)"
        if self.too_far:
            head = (
                f"distance {self.score:.2f} from the training data is above the threshold "
                f"{self.threshold:.2f} that {self.quantile:.1%} of held-out in-distribution "
                "rows stay within; furthest: "
                + "; ".join(f.describe(self.hidden) for f in self.features)
            )
        else:
            head = f"distance {self.score:.2f} is within the threshold {self.threshold:.2f}"
        rare = "; ".join(r.describe(self.hidden) for r in self.rare_levels)
        if rare:
            head += f"; {rare}" if self.too_far else f", but {rare}"
        verdict = "out of" if self.out_of_distribution else "within"
        return f"input {verdict} the training distribution: {head}"


@dataclass(frozen=True)
class _Levels:
    """Training counts of the levels of one categorical or boolean model column."""

    name: str
    index: int  # in the model matrix
    levels: tuple[str, ...]  # by code
    counts: tuple[int, ...]  # by code


class OodDetector:
    """A distance from the training split's model matrix, and its calibrated threshold."""

    def __init__(
        self,
        columns: list[str],
        indices: list[int],
        pivot: np.ndarray,
        median: np.ndarray,
        scale: np.ndarray,
        precision: np.ndarray,
        categorical: list[_Levels],
        train_rows: int,
        quantile: float = 1.0,
        threshold: float | None = None,
        held_out_rows: int = 0,
    ) -> None:
        self.columns = columns
        self.indices = np.asarray(indices, dtype=int)
        self.pivot = np.asarray(pivot, dtype=float)  # log scale asinh(x / pivot) where > 0
        self.median = np.asarray(median, dtype=float)  # of the (log-scaled) column
        self.scale = np.asarray(scale, dtype=float)
        self.precision = np.asarray(precision, dtype=float).reshape(len(columns), len(columns))
        self.categorical = categorical
        self.train_rows = train_rows
        self.quantile = quantile
        self.threshold = threshold
        self.held_out_rows = held_out_rows
        self.hidden: frozenset[str] = frozenset()  # personal columns, told as REDACTED
        self._rare = [np.asarray(c.counts) < RARE_LEVEL_FRACTION * train_rows for c in categorical]
        self._log = self.pivot > 0
        # the medians in the columns' own units, for people
        self._shown_median = np.where(self._log, self.pivot * np.sinh(self.median), self.median)

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        values = X[:, self.indices]  # a copy (fancy indexing)
        if self._log.any():
            values[:, self._log] = np.arcsinh(values[:, self._log] / self.pivot[self._log])
        z = (values - self.median) / self.scale
        return np.where(np.isfinite(z), z, 0.0)  # missing -> the median

    def _rare_mask(self, X: np.ndarray) -> np.ndarray:
        """(rows x categorical columns): the row's level is rare. A missing level is not;
        a code the training data could not hold at all is."""
        mask = np.zeros((len(X), len(self.categorical)), dtype=bool)
        for k, (col, rare) in enumerate(zip(self.categorical, self._rare, strict=True)):
            codes = X[:, col.index]
            known = np.isfinite(codes)
            safe = np.where(known, codes, 0).astype(int)
            inside = (safe >= 0) & (safe < len(rare))
            mask[:, k] = known & np.where(inside, rare[np.clip(safe, 0, len(rare) - 1)], True)
        return mask

    def scores(self, X: np.ndarray) -> np.ndarray:
        """The distance of every row of a model matrix."""
        z = self._standardise(X)
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", z @ self.precision, z), 0.0))

    def flags(self, X: np.ndarray) -> np.ndarray:
        """Whether each row is out of distribution (none when switched off)."""
        if self.threshold is None:
            return np.zeros(len(X), dtype=bool)
        return (self.scores(X) > self.threshold) | self._rare_mask(X).any(axis=1)

    def assess(self, X: np.ndarray) -> list[OodFinding]:
        """One finding per row, naming the features that deviate most."""
        z = self._standardise(X)
        squared = np.maximum(np.einsum("ij,ij->i", z @ self.precision, z), 0.0)
        features = self._top_features(X, z)
        rare = self._rare_mask(X)
        return [
            OodFinding(
                float(math.sqrt(squared[i])),
                self.threshold,
                self.quantile,
                features[i],
                tuple(self._rare_level(X, i, int(k)) for k in np.flatnonzero(rare[i])),
                self.hidden,
            )
            for i in range(len(X))
        ]

    def _top_features(self, X: np.ndarray, z: np.ndarray) -> list[tuple[FeatureDeviation, ...]]:
        """The TOP_FEATURES largest |z| of each row (none at the median or missing).
        Gathered for the whole batch: the per-row loop only builds the small records."""
        rows = np.arange(len(X))[:, None]
        top = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :TOP_FEATURES]
        records = zip(
            top.tolist(),
            X[:, self.indices][rows, top].tolist(),
            self._shown_median[top].tolist(),
            z[rows, top].tolist(),
            strict=True,
        )
        log = self._log.tolist()
        return [
            tuple(
                FeatureDeviation(self.columns[j], v if math.isfinite(v) else None, m, zj, log[j])
                for j, v, m, zj in zip(*record, strict=True)
                if zj != 0
            )
            for record in records
        ]

    def _rare_level(self, X: np.ndarray, i: int, k: int) -> RareLevel:
        col = self.categorical[k]
        code = int(X[i, col.index])
        if 0 <= code < len(col.levels):
            return RareLevel(col.name, col.levels[code], col.counts[code], self.train_rows)
        return RareLevel(col.name, f"code {code}", 0, self.train_rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "quantile": self.quantile,
            "threshold": self.threshold,
            "held_out_rows": self.held_out_rows,
            "train_rows": self.train_rows,
            "columns": list(self.columns),
            "indices": self.indices.tolist(),
            "pivot": self.pivot.tolist(),
            "median": self.median.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "categorical": [
                {
                    "name": c.name,
                    "index": c.index,
                    "levels": list(c.levels),
                    "counts": list(c.counts),
                }
                for c in self.categorical
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OodDetector:
        threshold = data["threshold"]
        return cls(
            columns=[str(c) for c in data["columns"]],
            indices=[int(i) for i in data["indices"]],
            pivot=np.asarray(data["pivot"], dtype=float),
            median=np.asarray(data["median"], dtype=float),
            scale=np.asarray(data["scale"], dtype=float),
            precision=np.asarray(data["precision"], dtype=float),
            categorical=[
                _Levels(
                    c["name"],
                    int(c["index"]),
                    tuple(str(v) for v in c["levels"]),
                    tuple(int(n) for n in c["counts"]),
                )
                for c in data["categorical"]
            ],
            train_rows=int(data["train_rows"]),
            quantile=float(data["quantile"]),
            threshold=None if threshold is None else float(threshold),
            held_out_rows=int(data["held_out_rows"]),
        )


def fit_ood(
    task: TaskSpec, X_train: np.ndarray, X_calibration: np.ndarray, quantile: float, seed: int
) -> OodDetector:
    """Fit on the rows the members trained on; set the threshold on held-out scores."""
    detector = _fit(task, X_train)
    held_out = [detector.scores(X_calibration)]
    if len(X_train) >= 2 * CROSS_FIT_FOLDS:
        folds = KFold(CROSS_FIT_FOLDS, shuffle=True, random_state=seed)
        for kept, left in folds.split(X_train):
            held_out.append(_fit(task, X_train[kept]).scores(X_train[left]))
    scores = np.concatenate(held_out)
    detector.quantile = quantile
    detector.threshold = _threshold(scores, quantile)
    detector.held_out_rows = len(scores)
    return detector


def _fit(task: TaskSpec, X: np.ndarray) -> OodDetector:
    numeric, categorical = _column_kinds(task, X)
    values = np.where(np.isfinite(X[:, numeric]), X[:, numeric], np.nan)
    pivot = _log_pivots(values)
    log = pivot > 0
    values[:, log] = np.arcsinh(values[:, log] / pivot[log])
    median, scale = _robust_location_scale(values)
    z = np.where(np.isnan(values), 0.0, (values - median) / scale)
    columns = [task.model_columns[j] for j in numeric]
    found = OodDetector(columns, numeric, pivot, median, scale, _precision(z), categorical, len(X))
    found.hidden = personal_columns(task)
    return found


def _column_kinds(task: TaskSpec, X: np.ndarray) -> tuple[list[int], list[_Levels]]:
    """Positions of the numeric model columns (inputs and derived features) and the level
    counts of the categorical and boolean ones."""
    numeric: list[int] = []
    levels: list[_Levels] = []
    inputs = {f.name: f for f in task.features}
    for j, name in enumerate(task.model_columns):
        feature = inputs.get(name)
        if feature is None or feature.type is FeatureType.NUMERIC:
            numeric.append(j)
            continue
        names = feature.categories or ("false", "true")
        codes = X[:, j][np.isfinite(X[:, j])].astype(int)
        counts = np.bincount(codes[(codes >= 0) & (codes < len(names))], minlength=len(names))
        levels.append(_Levels(name, j, tuple(names), tuple(int(c) for c in counts)))
    return numeric, levels


def _log_pivots(values: np.ndarray) -> np.ndarray:
    """Per column, the median that ``asinh(x / median)`` divides by where a log scale makes
    a non-negative column's training values more symmetric; 0 where the column stays linear."""
    pivot = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        seen = values[:, j][~np.isnan(values[:, j])]
        if len(seen) == 0 or seen.min() < 0:
            continue
        median = float(np.median(seen))
        if median > 0 and abs(_skewness(np.arcsinh(seen / median))) + SKEW_GAIN < abs(
            _skewness(seen)
        ):
            pivot[j] = median
    return pivot


def _skewness(seen: np.ndarray) -> float:
    """Octile skewness: where the median sits between the 1/8 and 7/8 quantiles, in -1..1."""
    low, mid, high = np.percentile(seen, [12.5, 50, 87.5])
    return 0.0 if high == low else float((low + high - 2 * mid) / (high - low))


def _robust_location_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and IQR / 1.349 per column. Where the IQR is 0 (a column mostly one value):
    the scaled MAD, else the standard deviation, else 1."""
    p = values.shape[1]
    median, scale = np.zeros(p), np.ones(p)
    for j in range(p):
        seen = values[:, j][~np.isnan(values[:, j])]
        if len(seen) == 0:
            continue
        median[j] = np.median(seen)
        q1, q3 = np.percentile(seen, [25, 75])
        mad = np.median(np.abs(seen - median[j]))
        scale[j] = next(
            (s for s in ((q3 - q1) / IQR_TO_SD, MAD_TO_SD * mad, seen.std()) if s > 0), 1.0
        )
    return median, scale


def _precision(z: np.ndarray) -> np.ndarray:
    """Inverse of the shrunk second moment about the median (z is centred there)."""
    n, p = z.shape
    if p == 0:
        return np.zeros((0, 0))
    if n < 2:
        return np.eye(p)
    return np.asarray(LedoitWolf(assume_centered=True).fit(z).precision_)


def _threshold(scores: np.ndarray, quantile: float) -> float | None:
    """The ceil((n + 1) q)-th smallest held-out score, at most the largest; None (never
    flag) at quantile 1 or without held-out rows."""
    n = len(scores)
    if quantile >= 1.0 or n == 0:
        return None
    rank = min(math.ceil((n + 1) * quantile - 1e-12), n)
    return float(np.sort(scores)[rank - 1])
