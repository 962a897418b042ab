"""Structured logs: JSON lines off a terminal with the request's context on each line, the
request id echoed in X-Request-ID, and no input value unless the task allows it (never a
pii feature)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import logs
from app.ml.task import TaskSpec
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.inputs import example_inputs
from tests.support.processes import ARBITER, wait_ready
from tests.support.server import Api, free_port, make_key

PREDICT = 'mutation($t: String!, $i: JSON!) { predict(task: $t, input: $i) { id } }'
SECRET_INCOME = 52345.678  # pii: never in the logs
LOGGED_AMOUNT = 12345.678  # loan_default logs its inputs in this test
HIDDEN_RADIUS = 17.123456  # breast_cancer does not


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_off_a_terminal_text_on_demand_with_the_context(restore_logging: None) -> None:
    stream = io.StringIO()  # not a terminal: auto means JSON
    logs.configure_logging("auto", "info", stream)
    token = logs.start_context(request_id="r-1", task="loan_default")
    logging.getLogger("arbiter.test").info("hello %s", "there")
    logs.end_context(token)
    logging.getLogger("arbiter.test").debug("below the level")
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "hello there" and record["level"] == "INFO"
    assert record["request_id"] == "r-1" and record["task"] == "loan_default"

    stream = io.StringIO()
    logs.configure_logging("text", "DEBUG", stream)
    token = logs.start_context(request_id="r-2")
    logging.getLogger("arbiter.test").debug("plain")
    logs.end_context(token)
    assert stream.getvalue().rstrip().endswith("arbiter.test plain [request_id=r-2]")


def test_log_level_is_checked() -> None:
    with pytest.raises(ValueError, match="log level 'loud' is not one of DEBUG"):
        Settings(log_level="loud")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_server_lines_carry_context_and_no_inputs(settings: Settings, tmp_path: Path,
                                                  example_tasks: dict[str, TaskSpec]) -> None:
    tasks = tmp_path / "tasks"
    shutil.copytree(EXAMPLE_TASKS_DIR, tasks)
    toml = tasks / "loan_default.toml"
    toml.write_text(toml.read_text().replace('name = "loan_default"\n',
                                             'name = "loan_default"\nlog_inputs = true\n', 1))
    env = {**os.environ, "ARBITER_DATA_DIR": str(settings.data_dir),
           "ARBITER_DATABASE_URL": settings.resolved_database_url,
           "ARBITER_TASKS_DIR": str(tasks)}
    env.pop("ARBITER_LOG_FORMAT", None)  # auto: stderr is a file here, so JSON
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    loan = {**example_inputs(example_tasks["loan_default"], 1)[0], "income": SECRET_INCOME,
            "loan_amount": LOGGED_AMOUNT}
    cancer = {**example_inputs(example_tasks["breast_cancer"], 1)[0],
              "mean_radius": HIDDEN_RADIUS}
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as sink:
        serve = subprocess.Popen([ARBITER, "serve", "--port", str(port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=sink)
        try:
            wait_ready(url, serve)
            key = make_key(settings, "predictor", "app")
            with httpx.Client(base_url=url, timeout=120) as http:
                api = Api(http, key)
                http.headers["X-Request-ID"] = "req-loan-1"
                answer = api.post(PREDICT, t="loan_default", i=loan)
                assert answer.headers["X-Request-ID"] == "req-loan-1"
                loan_id = answer.json()["data"]["predict"]["id"]
                del http.headers["X-Request-ID"]
                answer = api.post(PREDICT, t="breast_cancer", i=cancer)
                cancer_rid = answer.headers["X-Request-ID"]
                assert len(cancer_rid) == 32  # generated
                cancer_id = answer.json()["data"]["predict"]["id"]
                bad = http.post("/graphql", json={"query": "{ tasks { name } }"},
                                headers={"X-Request-ID": "no spaces; allowed"})
                assert bad.headers["X-Request-ID"] != "no spaces; allowed"
        finally:
            serve.terminate()
            serve.wait(timeout=60)
    text = stderr.read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    assert str(SECRET_INCOME) not in text and str(HIDDEN_RADIUS) not in text

    stored_lines = [r for r in lines if r["name"] == "arbiter.predictions"]
    [stored] = [r for r in stored_lines if r.get("prediction_id") == loan_id]
    assert stored["request_id"] == "req-loan-1" and stored["task"] == "loan_default"
    assert stored["release"] == 1 and stored["name"] == "arbiter.predictions"
    [logged] = stored["inputs"]
    assert logged["loan_amount"] == LOGGED_AMOUNT and "income" not in logged

    [other] = [r for r in stored_lines if r.get("prediction_id") == cancer_id]
    assert other["request_id"] == cancer_rid and other["task"] == "breast_cancer"
    assert "inputs" not in other
    access = [r for r in lines if r["name"] == "uvicorn.access"]
    [loan_access] = [r for r in access if r.get("request_id") == "req-loan-1"]
    assert "POST /graphql" in loan_access["message"] and loan_access["prediction_id"] == loan_id
    assert {"time", "level", "name", "message"} <= set(lines[0])
