"""Scoring a file: its rows go through ``predict_batch`` a chunk at a time.

Every chunk is one ``predictBatch``: validated whole, explained, routed, stored and audited
in one transaction, exactly as over GraphQL. A chunk's answers are appended to the output
(JSON Lines, one per input row, in order) after its transaction commits, and flushed to
disk: a killed run leaves committed chunks listed and nothing half-listed. ``skip``
resumes after the rows the output already lists. Each row is stored under the idempotency
key ``<run key>:<row number>``, the run key being kept beside the output
(``<output>.run``): a chunk that committed but was not yet written when the process died
is answered on resume with the predictions it stored, never stored twice, and counted
apart from the rows the resume stores.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from app.db.tables import Prediction
from app.db.types import utcnow
from app.errors import BadRequestError, IdempotencyConflictError, InputValidationError
from app.ml.routing import Route
from app.ml.task import FeatureType, TaskSpec
from app.predictions.path import predict_batch
from app.predictions.services import Services

CANCEL_REQUEST_SECONDS = 5.0
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _typed(kinds: dict[str, FeatureType], row: dict[str, str]) -> dict[str, Any]:
    """A CSV row with the JSON types the task's contract expects (``kinds``: feature ->
    type): an empty cell is a value left out; what does not convert stays text, for
    validation to name."""
    out: dict[str, Any] = {}
    for name, text in row.items():
        if text == "" or name is None:
            continue
        kind = kinds.get(name)
        if kind is FeatureType.NUMERIC:
            try:
                out[name] = float(text)
            except ValueError:
                out[name] = text
        elif kind is FeatureType.BOOLEAN and text.lower() in TRUE | FALSE:
            out[name] = text.lower() in TRUE
        else:
            out[name] = text
    return out


def read_rows(task: TaskSpec, path: Path) -> Iterator[Any]:
    """The inputs of a CSV file (header row: feature names) or a JSON Lines file (one
    object per line; blank lines are skipped), streamed."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BadRequestError(f"{path}: unknown format {path.suffix!r}; "
                              f"use one of {', '.join(sorted(FORMATS))}")
    with path.open(encoding="utf-8", newline="") as source:
        if kind == "csv":
            kinds = {f.name: f.type for f in task.features}
            for row in csv.DictReader(source):
                yield _typed(kinds, row)
            return
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"{path}, line {number}: not JSON ({exc.msg})") from None


def listed_rows(output: Path) -> int:
    """How many answers an earlier run wrote; a last line cut short by a crash (written
    before the flush finished) is removed, so that appending goes on from a whole line."""
    if not output.exists():
        return 0
    lines, whole, read = 0, 0, 0  # complete lines, bytes up to the last newline, bytes read
    with output.open("r+b") as listed:
        while block := listed.read(1 << 20):  # streamed: an output can hold millions of rows
            lines += block.count(b"\n")
            if (end := block.rfind(b"\n")) >= 0:
                whole = read + end + 1
            read += len(block)
        if whole < read:
            listed.truncate(whole)
    return lines


def run_key(source: Path, output: Path) -> str:
    """The key that names this run's rows: the one kept in ``<output>.run`` when the output
    exists and was started from the same source (a resume, or a rerun after a crash that
    listed nothing), else a new one, kept there before the output is opened."""
    marker = output.with_name(output.name + ".run")
    origin = str(source.resolve())
    if output.exists() and marker.exists():
        try:
            kept = json.loads(marker.read_text(encoding="utf-8"))
            if kept.get("source") == origin and isinstance(kept.get("key"), str):
                return str(kept["key"])
        except (json.JSONDecodeError, AttributeError):
            pass  # a marker cut short by a crash: nothing was stored under it yet
    key = f"file-{uuid.uuid4().hex}"
    written = marker.with_name(marker.name + ".tmp")
    written.write_text(json.dumps({"key": key, "source": origin}), encoding="utf-8")
    os.replace(written, marker)
    return key


@dataclass
class FileResult:
    """What a run did: rows it predicted and stored, rows answered with what an interrupted
    run had stored under their keys, and rows routed to review (of either)."""

    predicted: int = 0
    replayed: int = 0
    routed: int = 0


def _shifted(exc: InputValidationError, task: str, offset: int) -> InputValidationError:
    """The chunk's problems numbered by row of the file (1 = the first data row)."""
    return InputValidationError(task, [
        dataclasses.replace(p, index=None if p.index is None else p.index + offset + 1)
        for p in exc.problems])


@dataclass
class _Chunk:
    """A chunk of the file in flight: its first row (0-based), its rows, when it was sent
    (a row answered from storage was stored before: its creation time is earlier) and its
    ``predict_batch`` call."""

    start: int
    rows: list[Any]
    called: datetime
    call: asyncio.Task[list[Prediction]]


async def predict_file(services: Services, task: str, rows: Iterable[Any], output: TextIO,
                       *, actor: str, chunk_rows: int, run: str, skip: int = 0,
                       progress: Callable[[int], None] = lambda _: None) -> FileResult:
    """Predict every row after the first ``skip``, ``chunk_rows`` per transaction, each
    stored under the key ``<run>:<row number>``, writing ``{"row", "id", "label",
    "confidence", "route", "status"}`` per row to ``output``. The next chunk's models run
    while the current one is stored (two chunks in flight); answers are written in row
    order, each chunk after its own commit."""
    if not 1 <= chunk_rows <= services.settings.max_batch_size:
        raise BadRequestError(f"chunk rows must be 1 to {services.settings.max_batch_size} "
                              f"(ARBITER_MAX_BATCH_SIZE), got {chunk_rows}")
    result = FileResult()
    source = itertools.islice(iter(rows), skip, None)
    start = skip
    flying: _Chunk | None = None
    sent: _Chunk | None = None
    try:
        while True:
            chunk = list(itertools.islice(source, chunk_rows))
            sent = None
            if chunk:
                keys = [f"{run}:{start + n + 1}" for n in range(len(chunk))]
                sent = _Chunk(start, chunk, utcnow(), asyncio.create_task(predict_batch(
                    services, None, task, chunk, actor=actor, idempotency_keys=keys)))
                start += len(chunk)
            if flying is not None:
                _listed(await _answers(flying, task), flying, output, result)
                progress(len(flying.rows))
            if sent is None:
                return result
            flying, sent = sent, None
    finally:  # an error: the chunk after it is stopped (a resume replays it if it committed)
        for left in (flying, sent):
            if left is not None and not left.call.done():
                left.call.cancel()
                await asyncio.wait([left.call])
                await _cancel_requests_sent()
            if left is not None and not left.call.cancelled():
                left.call.exception()  # seen: its error is not the one this run reports


async def _cancel_requests_sent() -> None:
    """asyncpg sends the cancel request of a query stopped mid-flight from a task of its
    own: wait for those (bounded), so its connection closes before the event loop does."""
    requests = [t for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__qualname__", "") == "Connection._cancel"]
    if requests:
        await asyncio.wait(requests, timeout=CANCEL_REQUEST_SECONDS)


async def _answers(chunk: _Chunk, task: str) -> list[Prediction]:
    """The chunk's stored predictions, or its error numbered by row of the file."""
    try:
        return await chunk.call
    except InputValidationError as exc:
        raise _shifted(exc, task, chunk.start) from None
    except IdempotencyConflictError as exc:
        raise BadRequestError(
            f"a row from {chunk.start + 1} to {chunk.start + len(chunk.rows)} was stored by "
            f"the interrupted run with other values ({exc}); put the file back as it was, or "
            f"score it into a new --output") from None


def _listed(stored: list[Prediction], chunk: _Chunk, output: TextIO, result: FileResult
            ) -> None:
    """A committed chunk's answers appended to the output and flushed to disk, and
    counted."""
    output.writelines(
        json.dumps({"row": chunk.start + n + 1, "id": p.id, "label": p.label,
                    "confidence": p.confidence, "route": p.route, "status": p.status})
        + "\n" for n, p in enumerate(stored))
    output.flush()
    os.fsync(output.fileno())
    replayed = sum(p.created_at < chunk.called for p in stored)
    result.predicted += len(stored) - replayed
    result.replayed += replayed
    result.routed += sum(p.route == Route.REVIEW for p in stored)
