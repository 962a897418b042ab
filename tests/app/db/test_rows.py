"""Rows built without the constructor (app.db.tables.built), as the prediction path does."""

from __future__ import annotations

import pytest

from app.db.rows import built, values_of
from app.db.tables import Prediction, ReviewItem
from app.db.types import utcnow


def test_a_built_row_holds_exactly_its_values() -> None:
    values = {
        "id": "p1", "task": "t", "release_id": 1, "release_version": 1, "caller_key_id": None,
        "idempotency_key": None, "entity_key": None, "input_hash": "h", "input": {"a": 1},
        "input_salt": None, "input_commitment": None, "label": "x",
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
    with pytest.raises(ValueError, match="ReviewItem needs every column without a plain "
                                         "default; missing \\['created_at', 'due_at'"):
        built(ReviewItem, {"id": "r1"})


def test_columns_with_a_plain_default_may_be_left_out() -> None:
    now = utcnow()
    item = built(ReviewItem, {"id": "r1", "prediction_id": "p1", "task": "t",
                              "release_version": 2, "status": "PENDING", "due_at": now,
                              "created_at": now, "required_reviews": 3})
    values = values_of(item)
    assert values["required_reviews"] == 3 and values["reviews_done"] == 0
    assert values["lease_version"] == 0 and values["needs_adjudication"] is False
    assert values["lease_token_hash"] is None and values["resolved_at"] is None
    assert item.model_fields_set == {"id", "prediction_id", "task", "release_version",
                                     "status", "due_at", "created_at", "required_reviews"}
