"""Retraining in `arbiter worker` processes over Redis: a worker killed with SIGKILL in the
middle of fitting loses nothing; another worker takes the job over and finishes it once."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx

from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.documents import JOB, RETRAIN, data, wait_for_job
from tests.support.processes import start_worker
from tests.support.server import Api, LiveServer, make_key

FIT_WAIT_SECONDS = 600  # an upper bound on waiting for the fit to start, not a requirement


def wait_until_fitting(admin: Api, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + FIT_WAIT_SECONDS
    while time.monotonic() < deadline:
        job: dict[str, Any] = data(admin(JOB, id=job_id))["trainingJob"]
        if job["status"] == "RUNNING" and job["message"].startswith("fitting member"):
            return job
        assert job["status"] in ("QUEUED", "RUNNING"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never started fitting")


def slow_tasks(folder: Path) -> Path:
    """The example tasks with loan_default's boosted member fitting for seconds, so that a
    kill lands in the middle of the fit (same feature contract)."""
    folder.mkdir()
    for path in EXAMPLE_TASKS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == "loan_default":
            text = text.replace("max_iter = 120, learning_rate = 0.1",
                                "max_iter = 4000, learning_rate = 0.005")
            assert "max_iter = 4000" in text
        (folder / path.name).write_text(text)
    return folder


def test_a_worker_killed_while_training_loses_nothing(
        scaled: Settings, tmp_path: Path) -> None:
    tasks = slow_tasks(tmp_path / "tasks")
    stale = scaled.model_copy(update={"training_stale_seconds": 5.0, "tasks_dir": tasks})
    env = {"ARBITER_TRAINING_STALE_SECONDS": "5", "ARBITER_TASKS_DIR": str(tasks)}
    worker = start_worker(stale, env)
    try:
        with LiveServer(stale) as server, httpx.Client(base_url=server.url, timeout=60) as c:
            admin = Api(c, make_key(stale, "admin", "ops"))
            job = data(admin(RETRAIN, r="nightly"))["retrain"]
            wait_until_fitting(admin, job["id"])
            worker.send_signal(signal.SIGKILL)  # in the middle of the fit
            worker.wait(timeout=30)
            killed = data(admin(JOB, id=job["id"]))["trainingJob"]
            assert killed["status"] == "RUNNING" and killed["release"] is None
            joined = data(admin(RETRAIN, r="again"))["retrain"]  # joins the stalled job
            assert joined["id"] == job["id"] and joined["requests"] == 2

            worker = start_worker(stale, env)
            finished = wait_for_job(admin, job["id"])
            assert finished["status"] == "SUCCEEDED", finished
            assert finished["release"]["version"] == 2
            releases = data(admin('{ releases(task: "loan_default") { version } }'))
            assert [r["version"] for r in releases["releases"]] == [2, 1]  # made once
            attempts = admin('query($id: ID!) { trainingJob(id: $id) { attempts } }',
                             id=job["id"])
            assert data(attempts)["trainingJob"]["attempts"] == 2
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_server_stopped_while_training_leaves_the_job_to_run_again(
        settings: Settings, tmp_path: Path) -> None:
    """Embedded: the server stops while its in-process worker fits (a fit of minutes). The
    job is cancelled after the stop's grace time, and the next server finds it stalled and
    runs it again to the end, once. (What a cancelled job leaves in the database is checked
    in tests/workers/test_broker_loops.py: a fit holds no transaction.)"""
    tasks = slow_tasks(tmp_path / "tasks")
    slow = settings.model_copy(update={"training_stale_seconds": 5.0, "tasks_dir": tasks,
                                       "lease_sweep_seconds": 1.0})
    with LiveServer(slow) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        admin = Api(c, make_key(slow, "admin", "ops"))
        job = data(admin(RETRAIN, r="nightly"))["retrain"]
        wait_until_fitting(admin, job["id"])
    again = slow.model_copy(update={"tasks_dir": settings.tasks_dir})  # fits in seconds
    with LiveServer(again) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        admin = Api(c, make_key(again, "admin", "ops-2"))
        finished = wait_for_job(admin, job["id"])
        assert finished["status"] == "SUCCEEDED", finished
        assert finished["release"]["version"] == 2
        releases = data(admin('{ releases(task: "loan_default") { version } }'))
        assert [r["version"] for r in releases["releases"]] == [2, 1]  # made once
