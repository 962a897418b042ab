"""Rows built without the constructor (app.db.tables.built), as the prediction path does."""

from __future__ import annotations

import pytest

from app.db.tables import Prediction, ReviewItem, built, values_of
from app.db.types import utcnow


def test_a_built_row_holds_exactly_its_values() -> None:
    values = {
        "id": "p1", "task": "t", "release_id": 1, "release_version": 1, "caller_key_id": None,
        "idempotency_key": None, "input_hash": "h", "input": {"a": 1}, "label": "x",
        "confidence": 0.5, "probabilities": [], "prediction_set": ["x"], "members": [],
        "explanation": {}, "route": "AUTO", "reasons": [], "status": "ACCEPTED",
        "final_label": "x", "latency_ms": 1.0, "created_at": utcnow(),
    }
    row = built(Prediction, values)
    assert row.input == {"a": 1} and row.confidence == 0.5 and row.final_label == "x"
    assert values_of(row) == values
    assert row.model_dump()["label"] == "x"
    with pytest.raises(ValueError, match="missing \\['route'\\]"):
        built(Prediction, {k: v for k, v in values.items() if k != "route"})
    with pytest.raises(ValueError, match="ReviewItem needs every column"):
        built(ReviewItem, {"id": "r1"})
