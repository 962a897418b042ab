"""Training snapshots: a task's source rows plus the labels people settled up to a point
in time, frozen into one content-addressed file that a release names as its training data.

A snapshot's id is the SHA-256 of its content (model matrix, classes, and for each
reviewed row its prediction id and split), so taking a snapshot twice over the same data
gives the same snapshot, and a changed file is detected when it is loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db.pagination import Page, paginate
from app.db.tables import Prediction, SnapshotLabel, TrainingLabel, TrainingSnapshot
from app.db.types import utcnow
from app.drift.report import feature_reference
from app.errors import ModelLoadError
from app.ml.contract import to_matrix
from app.ml.data import load_frame, training_arrays
from app.ml.task import TaskSpec
from app.ml.training import ReviewedRows


class Split(StrEnum):
    """Which part of the training a reviewed label serves."""

    TRAIN = "train"
    CALIBRATION = "calibration"
    HOLDOUT = "holdout"


def reviewed_split(task: TaskSpec, prediction_id: str) -> str:
    """The split of a reviewed row, fixed by its prediction id: a row held out once is held
    out from every later snapshot too, so no release ever trains on the rows that judge it."""
    digest = hashlib.sha256(f"{task.name}:{prediction_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    s = task.training
    if u < s.test_fraction:
        return Split.HOLDOUT
    if u < s.test_fraction + s.calibration_fraction:
        return Split.CALIBRATION
    return Split.TRAIN


@dataclass
class SnapshotData:
    """The rows of a snapshot: source rows first, then the reviewed ones."""

    X: np.ndarray
    y: np.ndarray
    source_rows: int
    prediction_ids: list[str]
    splits: list[str]

    @property
    def reviewed(self) -> ReviewedRows:
        n = self.source_rows
        return ReviewedRows(self.X[n:], self.y[n:], np.asarray(self.splits, dtype=str))

    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X, dtype=float).tobytes())
        h.update(np.ascontiguousarray(self.y, dtype=np.int64).tobytes())
        h.update(str(self.source_rows).encode())
        for pid, split in zip(self.prediction_ids, self.splits, strict=True):
            h.update(f"|{pid}:{split}".encode())
        return h.hexdigest()


@dataclass
class _Label:
    id: int
    prediction_id: str
    label: str
    input: dict[str, object]


async def _labels(session: AsyncSession, task: str, until: datetime) -> list[_Label]:
    rows = (
        await session.exec(
            select(TrainingLabel, Prediction.input)
            .join(Prediction, col(Prediction.id) == col(TrainingLabel.prediction_id))
            .where(TrainingLabel.task == task, col(TrainingLabel.created_at) <= until)
            .order_by(col(TrainingLabel.id))
        )
    ).all()
    return [_Label(t.id or 0, t.prediction_id, t.label, dict(i)) for t, i in rows]


def _assemble(task: TaskSpec, labels: list[_Label]) -> SnapshotData:
    X_src, y_src = training_arrays(task, load_frame(task))
    index = {c: i for i, c in enumerate(task.classes)}
    # A label of a class the task no longer declares cannot be learned from.
    usable = [lb for lb in labels if lb.label in index]
    if usable:
        X_rev = to_matrix(task, [lb.input for lb in usable])
        X = np.vstack([X_src, X_rev])
        y = np.concatenate([y_src, np.array([index[lb.label] for lb in usable], dtype=int)])
    else:
        X, y = X_src, y_src
    return SnapshotData(
        X=X,
        y=y,
        source_rows=len(y_src),
        prediction_ids=[lb.prediction_id for lb in usable],
        splits=[reviewed_split(task, lb.prediction_id) for lb in usable],
    )


def _write(path: Path, data: SnapshotData) -> None:
    """Write to a temporary name and rename: a killed process leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        X=data.X,
        y=data.y,
        source_rows=np.array(data.source_rows),
        prediction_ids=np.array(data.prediction_ids, dtype=str),
        splits=np.array(data.splits, dtype=str),
    )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def snapshot_id(task: str, data: SnapshotData) -> str:
    """A snapshot's id: the hash of its task and its content. Two tasks whose data are the
    same (one source file, no labels yet) each get a snapshot of their own, so that lineage
    names the task a release was trained for; sharing one row would make ``task`` true of
    one of them only."""
    return hashlib.sha256(f"{task}:{data.content_hash()}".encode()).hexdigest()


def load_snapshot(artifacts_dir: Path, snapshot: TrainingSnapshot) -> SnapshotData:
    """The rows of a stored snapshot, refused when they no longer match its hash (of the
    content alone for snapshots taken before ids named their task)."""
    path = artifacts_dir / snapshot.path
    try:
        with np.load(path, allow_pickle=False) as f:
            data = SnapshotData(
                X=f["X"],
                y=f["y"],
                source_rows=int(f["source_rows"]),
                prediction_ids=[str(p) for p in f["prediction_ids"]],
                splits=[str(s) for s in f["splits"]],
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"cannot read training snapshot {path}: {exc}") from None
    if snapshot.id not in {snapshot_id(snapshot.task, data), data.content_hash()}:
        raise ModelLoadError(
            f"training snapshot {path} does not match its recorded hash {snapshot.id[:12]}…; "
            "the file was changed after it was taken"
        )
    return data


async def take_snapshot(
    sessions: async_sessionmaker[AsyncSession],
    task: TaskSpec,
    artifacts_dir: Path,
    actor: str,
    until: datetime | None = None,
) -> tuple[TrainingSnapshot, SnapshotData]:
    """Freeze the source rows and every label settled up to ``until`` (default: now), with
    the drift reference of its input features. The same task and content give the same
    snapshot (it is stored once)."""
    until = until or utcnow()
    async with sessions() as session:
        labels = await _labels(session, task.name, until)
    data = _assemble(task, labels)
    digest = snapshot_id(task.name, data)
    relative = Path("snapshots") / task.name / f"{digest}.npz"
    reference = feature_reference(task, data.X)
    async with sessions() as session, session.begin():
        existing = await session.get(TrainingSnapshot, digest)
        if existing is not None:
            if existing.reference is None:  # taken before drift references existed
                existing.reference = reference
                session.add(existing)
            return existing, data
    _write(artifacts_dir / relative, data)
    source_hash = SnapshotData(
        data.X[: data.source_rows], data.y[: data.source_rows], data.source_rows, [], []
    ).content_hash()
    snapshot = TrainingSnapshot(
        id=digest,
        task=task.name,
        path=relative.as_posix(),
        source_hash=source_hash,
        source_rows=data.source_rows,
        reviewed_rows=len(data.prediction_ids),
        labels_until=until,
        created_by=actor,
        reference=reference,
    )
    by_prediction = {lb.prediction_id: lb.id for lb in labels}
    async with sessions() as session, session.begin():
        if await session.get(TrainingSnapshot, digest) is None:  # a concurrent twin stored it
            session.add(snapshot)
            await session.flush()
            session.add_all(
                SnapshotLabel(
                    snapshot_id=digest,
                    training_label_id=by_prediction[pid],
                    prediction_id=pid,
                    split=split,
                )
                for pid, split in zip(data.prediction_ids, data.splits, strict=True)
            )
    return snapshot, data


async def learned_predictions(
    session: AsyncSession, snapshot_id: str, first: int, after: str | None,
    split: str | None = None,
) -> Page[Prediction]:
    """The reviewed predictions whose labels a snapshot holds (optionally of one split),
    newest first."""
    held = select(SnapshotLabel.prediction_id).where(SnapshotLabel.snapshot_id == snapshot_id)
    if split is not None:
        held = held.where(SnapshotLabel.split == split)
    return await paginate(session, Prediction, [col(Prediction.id).in_(held)], first, after)


async def label_splits(
    session: AsyncSession, snapshot_id: str, prediction_ids: list[str]
) -> dict[str, str]:
    """prediction id -> the split its label fell in, in one snapshot."""
    rows = (
        await session.exec(
            select(SnapshotLabel.prediction_id, SnapshotLabel.split).where(
                SnapshotLabel.snapshot_id == snapshot_id,
                col(SnapshotLabel.prediction_id).in_(prediction_ids),
            )
        )
    ).all()
    return dict(rows)


async def label_sources(session: AsyncSession, snapshot_id: str, prediction_ids: list[str]
                        ) -> dict[str, tuple[str, str]]:
    """prediction id -> (its training label, where it came from: ``review`` or ``outcome``)
    for the labels one snapshot holds."""
    rows = (await session.exec(
        select(SnapshotLabel.prediction_id, TrainingLabel.label, TrainingLabel.source)
        .join(TrainingLabel, col(TrainingLabel.id) == col(SnapshotLabel.training_label_id))
        .where(SnapshotLabel.snapshot_id == snapshot_id,
               col(SnapshotLabel.prediction_id).in_(prediction_ids)))).all()
    return {pid: (label, source) for pid, label, source in rows}


@dataclass
class LearnedLabels:
    """A page of the reviewed predictions a snapshot holds, with each one's split and its
    label's source."""

    page: Page[Prediction]
    splits: dict[str, str]  # prediction id -> train, calibration or holdout
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (label, source)


async def learned_labels(session: AsyncSession, snapshot_id: str | None, first: int,
                         after: str | None, split: str | None = None) -> LearnedLabels:
    """``learned_predictions`` with their splits; an empty page for no snapshot (a release
    stored before snapshots)."""
    if snapshot_id is None:
        return LearnedLabels(Page([], [], False, 0), {})
    page = await learned_predictions(session, snapshot_id, first, after, split)
    ids = [p.id for p in page.items]
    return LearnedLabels(page, await label_splits(session, snapshot_id, ids),
                         await label_sources(session, snapshot_id, ids))
