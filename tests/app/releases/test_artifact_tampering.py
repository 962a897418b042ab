"""A server whose LIVE release's member file was tampered with (one byte changed) or swapped
for a skops file holding an untrusted type refuses to load it: /readyz stays 200
(degraded) naming the task's state (the log says why), predicting on it is
MODEL_LOAD_FAILED, and the other task still serves."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sqlalchemy import text

from app.db.engine import make_engine
from app.ml.artifacts import save_pipeline
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key, run

PREDICT = 'mutation($t: String!, $i: JSON!) { predict(task: $t, input: $i) { id label } }'


def doubled(x: np.ndarray) -> np.ndarray:
    """Code that is not scikit-learn's: skops must not trust it."""
    return np.asarray(x) * 2


async def _member(settings: Settings, task: str) -> tuple[int, str]:
    """The id and artifact path of one member of the task's LIVE release."""
    engine = make_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT m.id, m.artifact_path FROM release_members m JOIN releases r "
                "ON r.id = m.release_id WHERE r.task = :t AND r.stage = 'LIVE' ORDER BY m.id"),
                {"t": task})).first()
    finally:
        await engine.dispose()
    assert row is not None
    return int(row[0]), str(row[1])


async def _record_hash(settings: Settings, member_id: int, sha256: str) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE release_members SET sha256 = :s WHERE id = :i"),
                               {"s": sha256, "i": member_id})
    finally:
        await engine.dispose()


def _flip_one_byte(settings: Settings) -> str:
    _, relative = run(_member(settings, "loan_default"))
    path = settings.artifacts_dir / relative
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "was modified: SHA-256"


def _swap_for_untrusted(settings: Settings) -> str:
    """A valid skops pipeline with a custom function, recorded with its own true hash (as if
    the database were tampered with too): only the trusted-type list stops it."""
    member_id, relative = run(_member(settings, "loan_default"))
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    pipeline = Pipeline([("custom", FunctionTransformer(doubled)),
                         ("model", LogisticRegression())]).fit(X, y)
    run(_record_hash(settings, member_id, save_pipeline(pipeline, settings.artifacts_dir
                                                        / relative)))
    return "holds untrusted types"


def _readiness(client: httpx.Client) -> httpx.Response:
    """/readyz once the registry has tried every task (it loads them in the background)."""
    deadline = time.monotonic() + 60
    while True:
        response = client.get("/readyz")
        if "not loaded" not in response.json()["tasks"].values():  # both tried
            return response
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)


@pytest.mark.parametrize("tamper", [_flip_one_byte, _swap_for_untrusted],
                         ids=["one-byte-changed", "untrusted-type"])
def test_a_tampered_live_artifact_is_refused(settings: Settings, tamper: Any,
                                             example_tasks: dict[str, TaskSpec],
                                             caplog: pytest.LogCaptureFixture) -> None:
    reason = tamper(settings)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        ready = _readiness(http)
        assert ready.status_code == 200  # the other task is served: degraded, not unready
        body = ready.json()
        assert body["status"] == "degraded" and body["database"] == "ok"
        assert body["tasks"] == {"breast_cancer": "serving", "loan_default": "artifact refused"}
        assert reason not in ready.text  # the unauthenticated body names states only
        [logged] = [r.getMessage() for r in caplog.records
                    if r.name == "arbiter.registry" and "loan_default is not served" in
                    r.getMessage()]
        assert reason in logged, logged  # the log says why, naming the file

        api = Api(http, make_key(settings, "predictor", "app"))
        row = example_inputs(example_tasks["loan_default"], 1)[0]
        answer = api(PREDICT, t="loan_default", i=row)
        assert answer["data"] is None
        (error,) = answer["errors"]
        assert error["extensions"]["code"] == "MODEL_LOAD_FAILED", error
        assert reason in error["message"]
        other = example_inputs(example_tasks["breast_cancer"], 1)[0]
        assert api(PREDICT, t="breast_cancer", i=other)["data"]["predict"]["label"]
        assert api("{ predictions { totalCount } }")["data"]["predictions"]["totalCount"] == 1
