"""Naive baseline for ``predict_throughput.py``: one member of the LIVE release behind Starlette.

``POST /predict`` takes a JSON object of the task's input features, builds the model matrix
with the project's own feature layer (``to_matrix``, derived features included) and calls the
member's ``predict_proba`` once, inline in the request handler. No validation, ensemble,
explanation, conformal routing, authentication or storage.

Run by the benchmark as ``python bench/baseline_app.py --data-dir D --task T --port P``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import uvicorn
from sklearn.pipeline import Pipeline
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.ml.artifacts import load_pipeline
from app.ml.contract import to_matrix
from app.ml.task import TaskSpec, load_tasks
from app.settings import EXAMPLE_TASKS_DIR

LIVE_MEMBER_SQL = sa.text(
    "SELECT r.version, m.artifact_path, m.sha256 FROM releases r "
    "JOIN release_members m ON m.release_id = r.id "
    "WHERE r.task = :task AND r.stage = 'LIVE' AND m.name = :member"
)


@dataclass(frozen=True)
class LiveMember:
    """Where the chosen member of the task's LIVE release is stored."""

    version: int
    path: Path
    sha256: str


def find_live_member(data_dir: Path, task: str, member: str) -> LiveMember | None:
    """The member of the LIVE release of ``task`` in the SQLite DB of ``data_dir``, if any."""
    db = data_dir / "arbiter.db"
    if not db.is_file():
        return None
    engine = sa.create_engine(f"sqlite:///{db.resolve()}")
    try:
        with engine.connect() as conn:
            row = conn.execute(LIVE_MEMBER_SQL, {"task": task, "member": member}).first()
    finally:
        engine.dispose()
    if row is None:
        return None
    return LiveMember(int(row[0]), data_dir / "artifacts" / row[1], str(row[2]))


def build_app(task: TaskSpec, pipeline: Pipeline, info: dict[str, Any]) -> Starlette:
    """The baseline app around an already loaded pipeline."""

    async def predict(request: Request) -> JSONResponse:
        row = await request.json()
        proba = pipeline.predict_proba(to_matrix(task, [row]))[0]
        best = int(np.argmax(proba))
        return JSONResponse({"label": task.classes[best], "confidence": float(proba[best])})

    async def readyz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready", **info})

    return Starlette(routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/readyz", readyz),
    ])


def load_app(data_dir: Path, task_name: str, member: str) -> Starlette:
    """Load the task and its LIVE member, failing loudly when either is missing."""
    task = load_tasks(EXAMPLE_TASKS_DIR)[task_name]
    live = find_live_member(data_dir, task_name, member)
    if live is None:
        raise SystemExit(f"no LIVE release of {task_name} with a member {member!r} in {data_dir}")
    pipeline = load_pipeline(live.path, live.sha256)
    info = {"task": task_name, "member": member, "release": live.version}
    return build_app(task, pipeline, info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--task", default="loan_default")
    parser.add_argument("--member", default="boosted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = load_app(args.data_dir, args.task, args.member)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")  # as `arbiter serve`


if __name__ == "__main__":
    main()
