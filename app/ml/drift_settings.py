"""How a task's drift is watched (its ``[drift]`` table): the tests, the window of recent
predictions, per-feature overrides (see ``app.drift.report``)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import BadRequestError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # as every task declaration


class DriftTest(StrEnum):
    """A statistical test of one feature's drift (see app.drift.report)."""

    KS = "ks"  # numeric: two-sample Kolmogorov-Smirnov p-value, drift below the threshold
    WASSERSTEIN = "wasserstein"  # numeric: distance / reference std, drift above
    CHI2 = "chi2"  # categorical, boolean: chi-squared p-value, drift below
    JENSEN_SHANNON = "jensenshannon"  # categorical, boolean: distance, drift above

    @property
    def numeric(self) -> bool:
        return self in (DriftTest.KS, DriftTest.WASSERSTEIN)

    @property
    def p_value(self) -> bool:
        """Drift when the statistic falls *below* the threshold (a p-value)."""
        return self in (DriftTest.KS, DriftTest.CHI2)


_WINDOW_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_WINDOW_SECONDS = 366 * 86400


def window_seconds(window: str) -> int:
    """``"90m"``, ``"24h"``, ``"7d"``, ``"2w"`` -> seconds; a clear error otherwise."""
    text = window.strip()
    unit = _WINDOW_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit():
        raise BadRequestError(
            f"window {window!r} is not a duration; write a whole number and a unit "
            "m, h, d or w, e.g. \"90m\", \"24h\", \"7d\""
        )
    seconds = int(text[:-1]) * unit
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise BadRequestError(f"window {window!r} must be longer than 0 and at most 366 days")
    return seconds


class FeatureDrift(_Strict):
    """Per-feature overrides of the drift test: which test, its threshold, or none."""

    test: DriftTest | None = None
    threshold: float | None = Field(default=None, gt=0)
    ignore: bool = False

    @model_validator(mode="after")
    def _check(self) -> FeatureDrift:
        test = self.test
        if test is not None and test.p_value and self.threshold is not None \
                and self.threshold >= 1:
            raise ValueError(f"a {test.value} threshold is a p-value: it must be below 1")
        return self


class DriftSettings(_Strict):
    """How recent inputs and predictions are compared with the LIVE release's training
    data, how often the worker does it, and whether drift asks for a retraining."""

    window: str = Field(default="24h", description="Recent predictions compared, e.g. 7d.")
    share: float = Field(
        default=0.5, gt=0, le=1, description="Drifted when this share of features drifted."
    )
    min_rows: int = Field(
        default=30, ge=5, description="Fewer recent rows than this: insufficient data."
    )
    check_every_minutes: float = Field(
        default=60.0, gt=0, description="The worker computes and stores a report this often."
    )
    retrain_on_drift: bool = False
    keep_reports_days: float = Field(
        default=90.0, ge=0,
        description="The periodic check deletes the task's stored reports older than this; "
                    "0 keeps every one.")
    features: dict[str, FeatureDrift] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> DriftSettings:
        try:
            window_seconds(self.window)
        except BadRequestError as exc:
            raise ValueError(str(exc)) from None
        return self
