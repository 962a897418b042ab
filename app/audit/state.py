"""Commitments to the state: the SHA-256 of the content of a row, which the event that
created or changed it carries (``payload.state``: ``{"table/id": hex}``). ``arbiter audit
verify`` recomputes them from the tables and names each row changed, deleted or added
behind the log's back (``app.audit.verify``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Select, Table, bindparam, select
from sqlmodel import SQLModel

from app.audit.encoding import canonical, stamp
from app.db.monitoring import Outcome
from app.db.tables import (
    ApiKey,
    Prediction,
    Release,
    ReleaseMember,
    Review,
    ReviewItem,
    StageChange,
    TrainingLabel,
)

# What each committed table's commitment covers: the columns that say what was decided.
# A prediction's input is covered by its salted commitment (an erased input leaves the
# row's commitment unchanged); leases and queue order are operational, not decisions.
# ``release_state`` is a second commitment to a release row: what drives its decisions
# (calibration: the conformal alphas and risk rows its certified AUTO thresholds come from;
# the gate's record; the quality alarm that holds every prediction for review), kept apart
# so the commitments made before it existed still hold.
FIELDS: dict[str, tuple[str, ...]] = {
    "predictions": ("id", "task", "release_id", "release_version", "caller_key_id",
                    "idempotency_key", "input_commitment", "label", "confidence",
                    "probabilities", "prediction_set", "members", "explanation", "route",
                    "reasons", "status", "final_label", "created_at"),
    "review_items": ("id", "prediction_id", "task", "release_version", "status",
                     "required_reviews", "reviews_done", "needs_adjudication", "final_label",
                     "resolution", "resolved_at", "created_at"),
    "reviews": ("id", "item_id", "reviewer_id", "reviewer_name", "label", "comment",
                "adjudication", "created_at"),
    "releases": ("id", "task", "version", "stage", "traffic_percent", "space",
                 "contract_hash", "data_hash", "routing", "created_at", "created_by"),
    "stage_changes": ("id", "release_id", "task", "from_stage", "to_stage",
                      "traffic_percent", "actor", "reason", "at"),
    "api_keys": ("id", "name", "role", "key_hash", "prefix", "created_at", "revoked_at"),
    "release_state": ("id", "calibration", "gate", "quality_alarm"),
    "release_members": ("id", "release_id", "name", "version", "algorithm", "family",
                        "weight", "params", "artifact_path", "sha256", "background_mean",
                        "metrics", "library_versions", "contract_hash", "created_at",
                        "created_by", "origin"),
    "training_labels": ("id", "prediction_id", "task", "label", "source", "created_at"),
    "outcomes": ("id", "prediction_id", "task", "release_id", "label", "observed_at",
                 "recorded_at", "recorded_by"),
}
MODELS: dict[str, type[SQLModel]] = {
    "predictions": Prediction, "review_items": ReviewItem, "reviews": Review,
    "releases": Release, "stage_changes": StageChange, "api_keys": ApiKey,
    "release_state": Release, "release_members": ReleaseMember,
    "training_labels": TrainingLabel, "outcomes": Outcome}
# The event that records outcomes (``app.audit.log.Kind``): it alone, of the events about a
# prediction, also commits to the prediction's outcome and training label (the events of
# the prediction path read nothing more than the prediction).
OUTCOME_RECORDED = "outcome.recorded"
# PostgreSQL's jsonb keeps no negative zero: both sides of a comparison drop its sign.
# (One pass of a regular expression: three substring searches of a row's few KB, each
# stopping at every -0.0x of its SHAP values, took four times as long.)
_NEGATIVE_ZERO = re.compile(rb"-0\.0(?=[,\]}])")


def table_of(name: str) -> Table:
    table: Table = MODELS[name].__table__  # type: ignore[attr-defined]
    return table


def digest(table: str, row: Mapping[str, Any]) -> str:
    """The commitment to a row: SHA-256 of its committed columns as orjson spells them with
    sorted keys (writer and verifier share this function; 10x the standard encoder)."""
    return digest_of(table, [row[f] for f in FIELDS[table]])


def digest_of(table: str, values: Sequence[Any]) -> str:
    """``digest`` of the values of ``FIELDS[table]``, in that order (as a SELECT of those
    columns returns them: the verifier reads each row as a tuple)."""
    text = orjson.dumps({f: stamp(v) if isinstance(v, datetime) else v
                         for f, v in zip(FIELDS[table], values, strict=True)},
                        option=orjson.OPT_SORT_KEYS, default=str)
    if _NEGATIVE_ZERO.search(text):
        text = _NEGATIVE_ZERO.sub(b"0.0", text)
    return hashlib.sha256(text).hexdigest()


def key(table: str, row: Mapping[str, Any]) -> str:
    return f"{table}/{row['id']}"


def commit_rows(table: str, rows: list[Mapping[str, Any]]) -> dict[str, str]:
    return {key(table, r): digest(table, r) for r in rows}


# SELECT * FROM table WHERE column = :value, built once per (table, column): an audited
# commit reads its subject's rows with these, mostly one value at a time, and building the
# statement and expanding an IN of one took twice as long as running it.
_BY_VALUE: dict[tuple[str, str], Select[Any]] = {}


def _rows(conn: Connection, table: str, column: str, values: list[Any]) -> list[Mapping[str, Any]]:
    t = table_of(table)
    if len(values) == 1:
        statement = _BY_VALUE.get((table, column))
        if statement is None:
            statement = _BY_VALUE[table, column] = select(t).where(
                t.c[column] == bindparam("value"))
        result = conn.execute(statement, {"value": values[0]})
    else:
        result = conn.execute(select(t).where(t.c[column].in_(values)))
    return [dict(r._mapping) for r in result]


def commitments(conn: Connection, subject_type: str, subject_id: str,
                task: str | None, kind: str = "") -> dict[str, str]:
    """The commitments of an event about this subject, read in its transaction (after
    the flush): a prediction (with its outcome and training label when ``kind`` records an
    outcome); a review item with its prediction, reviews and training label; a release
    with the other releases of its task (a promotion moves them), their decision state, its
    members and its stage changes; a key."""
    found: dict[str, str] = {}
    number = int(subject_id) if subject_id.isdigit() else None
    if subject_type in ("release", "api_key") and number is None:
        return found  # not a row of ours (a test's or a tool's event)
    if subject_type == "prediction":
        found.update(commit_rows("predictions", _rows(conn, "predictions", "id", [subject_id])))
        if kind == OUTCOME_RECORDED:
            for table in ("outcomes", "training_labels"):
                found.update(commit_rows(table, _rows(conn, table, "prediction_id",
                                                      [subject_id])))
    elif subject_type == "review_item":
        items = _rows(conn, "review_items", "id", [subject_id])
        found.update(commit_rows("review_items", items))
        predicted = [i["prediction_id"] for i in items]
        found.update(commit_rows("predictions", _rows(conn, "predictions", "id", predicted)))
        found.update(commit_rows("reviews", _rows(conn, "reviews", "item_id", [subject_id])))
        found.update(commit_rows("training_labels", _rows(
            conn, "training_labels", "prediction_id", predicted)))
    elif subject_type == "release":
        releases = (_rows(conn, "releases", "task", [task]) if task is not None
                    else _rows(conn, "releases", "id", [number]))
        found.update(commit_rows("releases", releases))
        found.update(commit_rows("release_state", releases))
        found.update(commit_rows("release_members", _rows(
            conn, "release_members", "release_id", [number])))
        found.update(commit_rows("stage_changes", _rows(
            conn, "stage_changes", "release_id", [number])))
    elif subject_type == "api_key":
        found.update(commit_rows("api_keys", _rows(conn, "api_keys", "id", [number])))
    return found


def input_commitment(salt: str, raw: dict[str, Any]) -> str:
    """The salted commitment to an input: SHA-256(salt bytes || canonical JSON). The salt
    (16 random bytes, kept with the input and erased with it) makes an erased input
    impossible to recover by hashing guesses."""
    return hashlib.sha256(bytes.fromhex(salt) + canonical(raw).encode()).hexdigest()
