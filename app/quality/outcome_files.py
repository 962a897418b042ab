"""Outcome files for ``arbiter outcomes import``: CSV (a header row) or JSON Lines (one
object per line), with the columns ``predictionId`` or ``entityKey``, ``label`` and
optionally ``observedAt`` (ISO 8601; without a zone, UTC). snake_case spellings are
accepted too. Every bad line is named by its number; one bad line refuses the file."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.errors import BadRequestError
from app.quality.outcomes import OutcomeInput

COLUMNS = {"predictionId": "prediction_id", "prediction_id": "prediction_id",
           "entityKey": "entity_key", "entity_key": "entity_key", "label": "label",
           "observedAt": "observed_at", "observed_at": "observed_at"}


def _text(value: Any, place: str, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{place}: {name} must be a string, got {json.dumps(value)}")
    return str(value)


def _time(value: str | None, place: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{place}: observedAt {value!r} is not an ISO 8601 time") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def outcome_of(fields: dict[str, Any], place: str) -> OutcomeInput:
    """One outcome from a line's fields (raises ValueError naming the place)."""
    unknown = sorted(set(fields) - COLUMNS.keys())
    if unknown:
        raise ValueError(f"{place}: unknown field(s) {', '.join(map(str, unknown))}; "
                         f"expected predictionId or entityKey, label, observedAt")
    values = {COLUMNS[k]: _text(v, place, k) for k, v in fields.items()}
    label = values.get("label")
    if label is None:
        raise ValueError(f"{place}: label is missing")
    return OutcomeInput(place, label, values.get("prediction_id"), values.get("entity_key"),
                        _time(values.get("observed_at"), place))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            extra = row.pop(None, None)
            if extra:
                yield reader.line_num, {**row, "(more values than columns)": extra}
            elif any(v not in (None, "") for v in row.values()):
                yield reader.line_num, {k: v for k, v in row.items() if v is not None}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"line {number}: not JSON ({exc.msg})"
                continue
            yield number, (value if isinstance(value, dict)
                           else f"line {number}: a JSON object is expected")


def read_outcomes(path: Path) -> tuple[list[OutcomeInput], list[str]]:
    """The outcomes of the file's good lines, and a problem naming each bad line (those
    are reported with what the good lines' check finds, and refuse the file)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise BadRequestError(f"{path}: outcome files are .csv or .jsonl, not {suffix!r}")
    rows: Iterator[tuple[int, dict[str, Any] | str]]
    rows = _csv_rows(path) if suffix == ".csv" else _jsonl_rows(path)
    outcomes, problems = [], []
    try:
        for number, fields in rows:
            try:
                if isinstance(fields, str):
                    raise ValueError(fields)
                outcomes.append(outcome_of(fields, f"line {number}"))
            except ValueError as exc:
                problems.append(str(exc))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadRequestError(f"cannot read {path}: {exc}") from None
    if not outcomes and not problems:
        raise BadRequestError(f"{path}: no outcomes in the file")
    return outcomes, problems
