"""Trained releases stored the way the app stores them, with or without their snapshot."""

from __future__ import annotations

from app.db.engine import make_engine, make_sessionmaker
from app.ml.training import TrainedRelease
from app.releases.store import Lineage, store_release
from app.settings import Settings
from app.training.snapshots import take_snapshot


async def store_all(settings: Settings, trained: dict[str, TrainedRelease]) -> None:
    """Store each trained release (the first of a task goes LIVE)."""
    engine = make_engine(settings.resolved_database_url)
    try:
        sessions = make_sessionmaker(engine)
        for release in trained.values():
            await store_release(sessions, settings.artifacts_dir, release, "tests")
    finally:
        await engine.dispose()


async def store_with_snapshots(settings: Settings, trained: dict[str, TrainedRelease],
                               tasks: list[str] | None = None) -> None:
    """Each trained release stored as a training job stores it: with the snapshot of the
    rows it was fitted on (the source rows: no labels yet), which holds its reference."""
    engine = make_engine(settings.resolved_database_url)
    try:
        sessions = make_sessionmaker(engine)
        for name, release in trained.items():
            if tasks is not None and name not in tasks:
                continue
            snapshot, _ = await take_snapshot(sessions, release.task, settings.artifacts_dir,
                                              "tests")
            await store_release(sessions, settings.artifacts_dir, release, "tests",
                                Lineage(snapshot_id=snapshot.id))
    finally:
        await engine.dispose()
