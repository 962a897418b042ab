"""The `arbiter` command as a user runs it: real processes, real HTTP."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from app.cli.context import run as with_sessions
from app.db.tables import StageChange
from app.ml.training import TrainedRelease
from app.releases.store import store_release
from app.settings import Settings
from tests.support.processes import ARBITER, arbiter, wait_ready
from tests.support.server import free_port


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for p in processes:
        p.terminate()
        p.wait(timeout=30)
        if p.stdout:
            p.stdout.close()


def test_train_lists_releases_and_makes_keys(env: dict[str, str]) -> None:
    first = arbiter(env, "train", "breast_cancer")
    assert first.returncode == 0, first.stderr
    assert "release 1 → LIVE" in first.stdout
    second = arbiter(env, "train", "breast_cancer")
    assert "release 2 → CANDIDATE" in second.stdout
    # the same data again: no better than LIVE, so the gate keeps it a candidate
    assert "gate: REJECTED" in second.stdout and "less than the required" in second.stdout
    listing = arbiter(env, "releases", "breast_cancer")
    assert re.search(r"│ 2\s+│ CANDIDATE.*│ REJECTED", listing.stdout)
    assert re.search(r"│ 1\s+│ LIVE", listing.stdout)
    key = arbiter(env, "keys", "create", "--role", "admin", "--name", "ops")
    assert re.fullmatch(r"arb_[A-Za-z0-9_-]{43}", key.stdout.strip().splitlines()[-1])
    bad_role = arbiter(env, "keys", "create", "--role", "boss", "--name", "x")
    assert bad_role.returncode == 2 and "unknown role 'boss'" in bad_role.stderr
    unknown = arbiter(env, "train", "nope")
    assert unknown.returncode == 2 and "unknown task 'nope'" in unknown.stderr


@pytest.mark.parametrize("command", [
    ["releases", "nosuch"],
    ["promote", "nosuch", "1", "--stage", "live"],
    ["rollback", "nosuch"],
    ["predict-file", "nosuch", "inputs.csv"],
    ["train", "nosuch"],
])
def test_task_commands_refuse_an_unknown_task(env: dict[str, str], command: list[str]) -> None:
    done = arbiter(env, *command)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "unknown task 'nosuch'; known tasks: " in done.stderr
    assert "breast_cancer" in done.stderr and "loan_default" in done.stderr


def test_demo_trains_prints_keys_and_serves(env: dict[str, str],
                                            started: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    demo = subprocess.Popen([ARBITER, "demo", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started.append(demo)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, demo)
    assert demo.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("curl ") for line in lines):
        lines.append(demo.stdout.readline())
    [curl] = [line for line in lines if line.startswith("curl ")]
    key = re.search(r"Bearer (arb_\S+)'", curl)
    payload = re.search(r"-d '(.*)'$", curl.strip())
    assert key and payload
    response = httpx.post(f"{url}/graphql", content=payload.group(1), timeout=60, headers={
        "Authorization": f"Bearer {key.group(1)}", "Content-Type": "application/json"})
    body = response.json()
    assert "errors" not in body, body
    assert body["data"]["predict"]["label"] in {"repaid", "late", "default"}
    assert httpx.get(f"{url}/graphql", headers={"Accept": "text/html"}).status_code == 200
    assert any(f"{url}/review" in line for line in lines)  # the pages, on the same server
    assert httpx.get(f"{url}/review").status_code == 200


def test_serve_does_not_train(env: dict[str, str], started: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    serve = subprocess.Popen([ARBITER, "serve", "--port", str(port)], env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started.append(serve)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2)
            if ready.json()["tasks"]["loan_default"] == "no live release":
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert ready.status_code == 503


async def cli_stage_changes(sessions: Any) -> list[StageChange]:
    async with sessions() as session:
        return list((await session.exec(select(StageChange).where(
            col(StageChange.actor).startswith("cli:")).order_by(col(StageChange.id)))).all())


def test_promote_and_rollback(env: dict[str, str], settings: Settings,
                              trained: dict[str, TrainedRelease]) -> None:
    with_sessions(settings, lambda sessions: store_release(  # release 2, beside LIVE 1
        sessions, settings.artifacts_dir, trained["breast_cancer"], "tests"))
    canary = arbiter(env, "promote", "breast_cancer", "2", "--stage", "canary",
                     "--traffic", "25", "--reason", "try it")
    assert canary.returncode == 0, canary.stderr
    assert "release 2: CANDIDATE → CANARY (25 %)" in canary.stdout
    missing = arbiter(env, "promote", "breast_cancer", "2", "--stage", "SHADOW",
                      "--traffic", "5")
    assert missing.returncode == 2 and "SHADOW takes 0 % of traffic" in missing.stderr
    live = arbiter(env, "promote", "breast_cancer", "2", "--stage", "LIVE")
    assert "release 1: LIVE → RETIRED" in live.stdout
    assert "release 2: CANARY → LIVE" in live.stdout
    back = arbiter(env, "rollback", "breast_cancer", "--reason", "alarms")
    assert back.returncode == 0, back.stderr
    assert "release 2: LIVE → RETIRED" in back.stdout
    assert "release 1: RETIRED → LIVE" in back.stdout
    listing = arbiter(env, "releases", "breast_cancer")
    assert re.search(r"│ 2\s+│ RETIRED", listing.stdout) and re.search(r"│ 1\s+│ LIVE",
                                                                        listing.stdout)
    history = with_sessions(settings, cli_stage_changes)
    assert [(c.from_stage, c.to_stage, c.reason) for c in history] == [
        ("CANDIDATE", "CANARY", "try it"),
        ("LIVE", "RETIRED", "replaced by release 2: promoted from the command line"),
        ("CANARY", "LIVE", "promoted from the command line"),
        ("LIVE", "RETIRED", "rolled back to release 1: alarms"),
        ("RETIRED", "LIVE", "alarms"),
    ]
