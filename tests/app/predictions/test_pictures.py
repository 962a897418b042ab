"""A stored prediction's explanation of any class, its picture's address and ETag."""

from __future__ import annotations

from typing import Any

import pytest

from app.db.tables import Prediction
from app.errors import BadRequestError
from app.predictions.charts import ChartKind, ImageFormat
from app.predictions.pictures import class_explanation, picture_etag, picture_path


def _stored(classes: list[str], probabilities: list[float], space: str,
            **extra: Any) -> Prediction:
    label = classes[max(range(len(classes)), key=probabilities.__getitem__)]
    return Prediction(
        id="p-1", task="churn", release_id=1, release_version=4, input_hash="0" * 64,
        input={"tenure": 3, "plan": "pro"}, label=label, confidence=max(probabilities),
        probabilities=[{"label": c, "probability": p}
                       for c, p in zip(classes, probabilities, strict=True)],
        prediction_set=[label], members=[], route="AUTO", reasons=[], status="ACCEPTED",
        latency_ms=1.0,
        explanation={"status": "OK", "space": space, "explainedClass": label,
                     "baseValue": 0.3, "outputValue": 0.8,
                     "contributions": [
                         {"feature": "tenure", "value": 3, "shap": 0.6, "derived": False},
                         {"feature": "plan", "value": "pro", "shap": -0.1, "derived": False}],
                     **extra})


def test_the_predicted_class_by_default() -> None:
    ex = class_explanation(_stored(["stays", "leaves"], [0.2, 0.8], "PROBABILITY"))
    assert (ex.explained_class, ex.base, ex.output) == ("leaves", 0.3, 0.8)
    assert [(c.feature, c.value, c.shap) for c in ex.contributions] == [
        ("tenure", 3, 0.6), ("plan", "pro", -0.1)]
    assert (ex.task, ex.release, ex.prediction_id, ex.class_probability) == (
        "churn", 4, "p-1", 0.8)


def test_a_binary_tasks_other_class_is_the_mirror() -> None:
    probability = class_explanation(
        _stored(["stays", "leaves"], [0.2, 0.8], "PROBABILITY"), "stays")
    assert probability.base == pytest.approx(0.7) and probability.output == pytest.approx(0.2)
    assert [c.shap for c in probability.contributions] == [-0.6, 0.1]
    assert probability.class_probability == 0.2
    log_odds = class_explanation(_stored(["stays", "leaves"], [0.2, 0.8], "LOG_ODDS"), "stays")
    assert (log_odds.base, log_odds.output) == (-0.3, -0.8)
    for ex in (probability, log_odds):
        assert ex.base + sum(c.shap for c in ex.contributions) == pytest.approx(ex.output)


def test_a_multiclass_prediction_stores_every_class() -> None:
    other = {"class": "downgrades", "baseValue": 0.1, "outputValue": 0.15, "shap": [0.2, -0.15]}
    stored = _stored(["stays", "leaves", "downgrades"], [0.05, 0.8, 0.15], "PROBABILITY",
                     otherClasses=[other])
    ex = class_explanation(stored, "downgrades")
    assert (ex.base, ex.output, [c.shap for c in ex.contributions]) == (0.1, 0.15, [0.2, -0.15])
    assert ex.label == "leaves" and ex.class_probability == 0.15
    with pytest.raises(BadRequestError, match="only its predicted class 'leaves'"):
        class_explanation(stored, "stays")  # stored before every class was kept
    with pytest.raises(BadRequestError, match="no class 'gone'; its classes: stays, leaves"):
        class_explanation(stored, "gone")


def test_addresses_and_etags() -> None:
    assert picture_path("p-1") == "/explanations/p-1.svg"
    assert picture_path("p-1", ImageFormat.PNG, ChartKind.BAR, "late payer & co") == (
        "/explanations/p-1.png?kind=bar&class=late%20payer%20%26%20co")
    ex = class_explanation(_stored(["stays", "leaves"], [0.2, 0.8], "LOG_ODDS"))
    other = class_explanation(_stored(["stays", "leaves"], [0.2, 0.8], "LOG_ODDS"), "stays")
    tags = {picture_etag(e, k, f, t) for e in (ex, other) for k in ChartKind
            for f in ImageFormat for t in (5, 10)}
    assert len(tags) == 16
    assert picture_etag(ex, ChartKind.BAR, ImageFormat.SVG, 10) == picture_etag(
        class_explanation(_stored(["stays", "leaves"], [0.2, 0.8], "LOG_ODDS")),
        ChartKind.BAR, ImageFormat.SVG, 10)
