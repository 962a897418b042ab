"""A task a user declares in their own folder (CSV data, their own derived-feature module,
random-forest members explained in probability space) works like the bundled ones."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from app.ml.task import load_tasks
from app.ml.training import fit_release
from app.settings import Settings
from tests.support.documents import CONTRACT, check_prediction
from tests.support.releases import store_all
from tests.support.server import Api, LiveServer, make_key, run

TASK = """
name = "churn"
classes = ["stays", "leaves", "downgrades"]
[data]
csv = "churn.csv"
target = "outcome"
[[features]]
name = "tenure_months"
type = "numeric"
min = 0
max = 600
[[features]]
name = "plan"
type = "categorical"
categories = ["basic", "plus", "pro"]
[[features]]
name = "tickets"
type = "numeric"
min = 0
[[features]]
name = "autopay"
type = "boolean"
[[derived]]
name = "tickets_per_year"
function = "churn_features:per_year"
inputs = ["tickets", "tenure_months"]
[[members]]
name = "forest"
algorithm = "random_forest"
weight = 2
params = { n_estimators = 60, max_depth = 6 }
[[members]]
name = "extra"
algorithm = "extra_trees"
weight = 1
params = { n_estimators = 60, max_depth = 6 }
"""

FEATURES = '''
import numpy as np

def per_year(tickets, tenure_months):
    months = np.maximum(np.asarray(tenure_months, dtype=float), 1.0)
    return np.asarray(tickets, dtype=float) * 12.0 / months
'''


def _write_task(folder: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1500
    frame = pd.DataFrame({
        "tenure_months": rng.integers(0, 120, n), "plan": rng.choice(["basic", "plus", "pro"], n),
        "tickets": rng.poisson(3, n), "autopay": rng.random(n) < 0.5})
    rate = frame.tickets * 12 / np.maximum(frame.tenure_months, 1)
    score = rate - 0.02 * frame.tenure_months - frame.autopay + rng.normal(0, 0.5, n)
    frame["outcome"] = np.where(score > 1, "leaves", np.where(score > 0, "downgrades", "stays"))
    frame.to_csv(folder / "churn.csv", index=False)
    (folder / "churn.toml").write_text(TASK)
    (folder / "churn_features.py").write_text(FEATURES)


@pytest.fixture
def churn_api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    folder = tmp_path / "tasks"
    folder.mkdir()
    _write_task(folder)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        tasks_dir=folder, release_refresh_seconds=0.0)
    settings.data_dir.mkdir()
    task = load_tasks(folder)["churn"]
    run(store_all(settings, {"churn": fit_release(task)}))
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        yield Api(c, make_key(settings, "predictor", "churn-app"))


def test_a_declared_task_predicts_and_explains(churn_api: Api, tmp_path: Path) -> None:
    task = load_tasks(tmp_path / "tasks")["churn"]
    for tenure, plan, tickets, autopay in [(2, "basic", 9, False), (100, "pro", 0, True),
                                           (30, "plus", 3, True)]:
        row = {"tenure_months": tenure, "plan": plan, "tickets": tickets, "autopay": autopay}
        body = churn_api(CONTRACT, task="churn", input=row)
        assert "errors" not in body, body
        p = body["data"]["predict"]
        check_prediction(task, p)
        ex = p["explanation"]
        assert ex["space"] == "PROBABILITY"
        assert math.isclose(ex["outputValue"], p["confidence"], abs_tol=1e-9)
        per_year = next(c for c in ex["contributions"] if c["feature"] == "tickets_per_year")
        assert math.isclose(per_year["value"], tickets * 12 / max(tenure, 1))
        plan_value = next(c for c in ex["contributions"] if c["feature"] == "plan")
        assert plan_value["value"] == plan
    wrong = churn_api(CONTRACT, task="churn", input={"tenure_months": 5, "plan": "gold",
                                                     "tickets": 1, "autopay": "yes"})
    assert {f["field"] for f in wrong["errors"][0]["extensions"]["fields"]} == {"plan", "autopay"}
