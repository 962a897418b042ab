"""A task the project does not ship, brought as a new user brings one (issue 23's walk-through,
as docs/tasks.md tells it): scikit-learn's wine data (178 rows, three classes) in a CSV beside
a task file of one's own, trained with `arbiter train`, then served with exact explanations,
routed, reviewed, retrained from the labels, streamed to a subscriber, audited and shown on
the pages, through the public API on each backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_wine

from app.ml.task import TaskSpec, load_tasks
from app.settings import Settings
from tests.support.documents import (
    CONTRACT,
    JOB_WAIT_SECONDS,
    check_prediction,
    data,
    wait_for_job,
)
from tests.support.processes import arbiter
from tests.support.server import LiveServer, People
from tests.support.subscriber import client, subscribed, take

TASK_FILE = """
name = "wine"
description = "Three cultivars of one Italian region, from a chemical analysis."
classes = ["barolo", "grignolino", "barbera"]

[data]
csv = "wine.csv"
target = "cultivar"

[training]
seed = 5

[review]
audit_rate = 0.3            # a third of the confident answers go to a reviewer as well

[[members]]
name = "logistic"
algorithm = "logistic_regression"
weight = 0.5
params = { C = 0.5, max_iter = 5000 }

[[members]]
name = "boosted"            # log-odds, as the logistic member (docs/tasks.md: one space)
algorithm = "hist_gradient_boosting"
weight = 0.5
params = { max_iter = 40, max_leaf_nodes = 8 }
"""
RETRAIN = 'mutation { retrain(task: "wine", reason: "the panel\'s labels") { id } }'
CLAIM = """mutation { claimReview(task: "wine") { leaseToken
  item { prediction { id label predictionSet } } } }"""
SUBMIT = "mutation($t: String!, $l: String!) { submitReview(leaseToken: $t, label: $l) { id } }"
LINEAGE = """query($v: Int!) { release(task: "wine", version: $v) { version
  snapshot { task reviewedRows } } }"""


def columns() -> tuple[list[str], Any]:
    """The wine frame with names a task file takes (`od280/od315_...` has a slash)."""
    frame = load_wine(as_frame=True).frame
    frame.columns = [c.replace("/", "_") for c in frame.columns]
    classes = ("barolo", "grignolino", "barbera")
    frame["cultivar"] = [classes[int(t)] for t in frame.pop("target")]
    return [c for c in frame.columns if c != "cultivar"], frame


@pytest.fixture
def own_task(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A tasks folder holding wine.toml and wine.csv; rows to predict (inputs and truth)."""
    features, frame = columns()
    folder = tmp_path / "tasks"
    folder.mkdir()
    spec = TASK_FILE + "".join(f'\n[[features]]\nname = "{f}"\ntype = "numeric"\n'
                               for f in features)
    (folder / "wine.toml").write_text(spec)
    frame.to_csv(folder / "wine.csv", index=False)
    rows = frame.sample(40, random_state=1).to_dict(orient="records")
    return folder, rows


@pytest.fixture
def server(database_url: str, env: dict[str, str], tmp_path: Path,
           own_task: tuple[Path, list[dict[str, Any]]]) -> Iterator[tuple[LiveServer, Settings]]:
    folder, _ = own_task
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        tasks_dir=folder, release_refresh_seconds=0.0)
    trained = arbiter({**env, "ARBITER_TASKS_DIR": str(folder)}, "train", "wine")
    assert trained.returncode == 0, trained.stderr
    assert "release 1 → LIVE" in trained.stdout, trained.stdout  # a first release serves
    with LiveServer(settings) as live:
        yield live, settings


async def predict_while_subscribed(live: LiveServer, people: People,
                                   rows: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Every row predicted over HTTP while a subscriber follows the task's predictions."""
    async with client(live.url, people.admin.key or "") as session:
        heard = asyncio.ensure_future(take(session, """subscription {
            predictions(task: "wine") { id route } }""", len(rows)))
        await subscribed(live, 1)
        answers = [await asyncio.to_thread(people.predictor, CONTRACT, task="wine",
                                           input={k: v for k, v in row.items()
                                                  if k != "cultivar"})
                   for row in rows]
        return answers, await asyncio.wait_for(heard, JOB_WAIT_SECONDS)


def review_everything(people: People, truth: dict[str, str]) -> int:
    """Reviewers label every waiting item with the true cultivar; how many they labelled."""
    done = 0
    while (lease := data(people.reviewer(CLAIM))["claimReview"]) is not None:
        label = truth[lease["item"]["prediction"]["id"]]
        data(people.reviewer(SUBMIT, t=lease["leaseToken"], l=label))
        done += 1
    return done


def test_a_task_of_ones_own_walks_from_task_file_to_audit(
        server: tuple[LiveServer, Settings], own_task: tuple[Path, list[dict[str, Any]]]
) -> None:
    live, settings = server
    folder, rows = own_task
    task: TaskSpec = load_tasks(folder)["wine"]
    with httpx.Client(base_url=live.url, timeout=120) as http:
        people = People(http, settings)
        answers, heard = asyncio.run(predict_while_subscribed(live, people, rows))
        predictions = [data(a)["predict"] for a in answers]
        for p in predictions:
            check_prediction(task, p)  # exact SHAP, a set from the task's classes, the route
        assert {h["predictions"]["id"] for h in heard} == {p["id"] for p in predictions}
        truth = {p["id"]: row["cultivar"] for p, row in zip(predictions, rows, strict=True)}
        routed = [p for p in predictions if p["route"] == "REVIEW"]
        assert routed, "audit_rate 0.3 of 40 rows sent none to review: nothing to walk"
        assert review_everything(people, truth) == len(routed)

        job = wait_for_job(people.admin, data(people.admin(RETRAIN))["retrain"]["id"])
        assert job["status"] == "SUCCEEDED", job
        version = job["release"]["version"]
        lineage = data(people.admin(LINEAGE, v=version))["release"]["snapshot"]
        assert lineage == {"task": "wine", "reviewedRows": len(routed)}

        verified = data(people.admin("{ verifyAuditLog { ok } }"))["verifyAuditLog"]
        assert verified == {"ok": True}
        for page in ("/review", "/audit", "/ops", "/graphql"):
            shown = http.get(page, headers={"Accept": "text/html"})
            assert shown.status_code == 200 and "<html" in shown.text.lower(), page
