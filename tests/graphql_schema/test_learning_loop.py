"""The learning loop over real HTTP, on a task whose data shift: shifted inputs are routed,
scripted reviewers label them with the truth, `retrain` runs in the embedded Dramatiq
worker, the gate accepts the better candidate (measured on fresh shifted data) and rejects
a worse one, and lineage answers both ways."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.db.engine import make_engine, make_sessionmaker
from app.examples.loan import generate
from app.ml.data import training_arrays
from app.ml.task import TaskSpec
from app.ml.training import classification_metrics
from app.releases.registry import build_ensemble
from app.releases.store import release_by_version, release_members
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support import subscriber
from tests.support.documents import JOB_WAIT_SECONDS, RELEASE_EVENTS, RETRAIN, data, wait_for_job
from tests.support.inputs import frame_inputs
from tests.support.server import Api, LiveServer, make_key

TASK = "loan_default"
REVIEWED = 480  # shifted predictions people label (about 90 held out: the gate's McNemar test
# on 55 held-out rows (300 reviewed) once missed p < 0.05 with 6 of 7 discordant pairs won)


BATCH = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id route } }'
CLAIM = """mutation { claimReview(task: "loan_default") {
  leaseToken item { prediction { id } } } }"""
SUBMIT = "mutation($t: String!, $l: String!) { submitReview(leaseToken: $t, label: $l) { id } }"
RELEASE = """query($v: Int!) { release(task: "loan_default", version: $v) {
  version stage gate rows parent { version } job { id status }
  snapshot { id sourceRows reviewedRows labelsUntil }
  learnedFrom(first: 500) { totalCount edges { node { split dataSplit label prediction { id } } } }
  holdout: learnedFrom(first: 500, dataSplit: HOLDOUT) { totalCount }
  oldHoldout: learnedFrom(first: 500, split: "holdout") { totalCount } } }"""
PROMOTE = """mutation($v: Int!, $s: ReleaseStage!, $p: Float) { promoteRelease(
  task: "loan_default", version: $v, stage: $s, trafficPercent: $p, reason: "test") {
  version stage trafficPercent } }"""
HISTORY = """query($v: Int!) { release(task: "loan_default", version: $v) {
  stageHistory { fromStage toStage actor } } }"""
COMPARE = """{ releaseComparison(task: "loan_default", version: 2) { stage liveVersion
  overall { paired agreement reviewed releaseAccuracy liveAccuracy } } }"""
TRAINED_INTO = """query($id: ID!) { prediction(id: $id) {
  trainedInto { version split dataSplit } } }"""


class Team:
    def __init__(self, client: httpx.Client, settings: Settings, server: LiveServer) -> None:
        self.server = server
        self.predictor = Api(client, make_key(settings, "predictor", "app"))
        self.reviewer = Api(client, make_key(settings, "reviewer", "rita"))
        self.admin = Api(client, make_key(settings, "admin", "ops"))


@pytest.fixture
def team(settings: Settings) -> Iterator[Team]:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        yield Team(c, settings, server)


def wait_for_comparison(api: Api, paired: int) -> dict[str, Any]:
    """Shadow scoring runs after the response: wait until it has scored ``paired`` inputs."""
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while time.monotonic() < deadline:
        comparison: dict[str, Any] = data(api(COMPARE))["releaseComparison"]
        if comparison["overall"]["paired"] >= paired:
            return comparison
        time.sleep(0.5)
    raise AssertionError(f"shadow scored only {comparison['overall']['paired']} inputs")


def review_everything(team: Team, truth: dict[str, str]) -> int:
    """Scripted reviewers: claim until the queue is empty, answer with the true outcome."""
    done = 0
    while True:
        lease = data(team.reviewer(CLAIM))["claimReview"]
        if lease is None:  # the queue is empty
            return done
        label = truth[lease["item"]["prediction"]["id"]]
        data(team.reviewer(SUBMIT, t=lease["leaseToken"], l=label))
        done += 1


def accuracy_on(settings: Settings, task: TaskSpec, version: int, X: np.ndarray,
                y: np.ndarray) -> float:
    """A stored release's accuracy on rows, loaded from its artifacts like a server does."""
    async def load() -> Any:
        engine = make_engine(settings.resolved_database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                release = await release_by_version(session, task.name, version)
                members = await release_members(session, release.id or 0)
            return build_ensemble(task, release, members, settings.artifacts_dir)
        finally:
            await engine.dispose()

    ensemble = asyncio.run(load())
    return float(classification_metrics(ensemble.probabilities(X), y)["accuracy"])


def crippled_tasks(folder: Path) -> Path:
    """The example tasks with loan_default's members starved of capacity (same contract)."""
    folder.mkdir()
    for path in EXAMPLE_TASKS_DIR.glob("*.toml"):
        text = path.read_text()
        if path.stem == TASK:
            text = text.replace("max_iter = 120, learning_rate = 0.1", "max_iter = 2, "
                                "learning_rate = 0.01").replace("C = 1.0", "C = 0.0001")
            assert "max_iter = 2," in text and "C = 0.0001" in text
        (folder / path.name).write_text(text)
    return folder


def test_reviews_of_shifted_inputs_make_a_better_release(
    team: Team, settings: Settings, example_tasks: dict[str, TaskSpec], tmp_path: Path
) -> None:
    task = example_tasks[TASK]
    # Every prediction goes to people (as an audit of a market the model never saw).
    data(team.admin('mutation { setReleaseRouting(task: "loan_default", version: 1, '
                    'policy: {audit_rate: 1.0}) { version } }'))
    shifted = generate(rows=REVIEWED, seed=77, long_terms=0.5)
    stored = data(team.predictor(BATCH, i=frame_inputs(task, shifted)))["predictBatch"]
    assert all(p["route"] == "REVIEW" for p in stored)
    truth = {p["id"]: outcome for p, outcome in zip(stored, shifted["outcome"], strict=True)}
    assert review_everything(team, truth) == REVIEWED

    job = data(team.admin(RETRAIN, r="long loans appeared"))["retrain"]
    assert job["status"] == "QUEUED" and job["triggeredBy"] == "MANUAL"
    assert job["trigger"] == "manual", "the deprecated spelling answers for one release"
    finished = wait_for_job(team.admin, job["id"])
    assert finished["status"] == "SUCCEEDED", finished
    gate = finished["release"]["gate"]
    assert finished["release"]["version"] == 2
    assert gate["decision"] == "PASSED", gate["reasons"]
    assert finished["release"]["stage"] == "SHADOW"  # the task's gate: promote_to = SHADOW
    table = {(r["metric"], r["slice"]): r for r in gate["table"]}
    assert table[("accuracy", "reviewed")]["gain"] > 0.05
    assert table[("accuracy", "all")]["rows"] == (
        table[("accuracy", "source")]["rows"] + table[("accuracy", "reviewed")]["rows"])

    # The improvement is real: fresh shifted rows neither release has seen.
    X_new, y_new = training_arrays(task, generate(rows=2000, seed=991, long_terms=0.5))
    before = accuracy_on(settings, task, 1, X_new, y_new)
    after = accuracy_on(settings, task, 2, X_new, y_new)
    assert after - before > 0.08, (before, after)
    X_book, y_book = training_arrays(task, generate(rows=2000, seed=992))
    assert accuracy_on(settings, task, 2, X_book, y_book) > accuracy_on(
        settings, task, 1, X_book, y_book) - 0.01

    # Lineage, from the release: its snapshot, its parent, the labels it learned from.
    release = data(team.admin(RELEASE, v=2))["release"]
    assert release["parent"] == {"version": 1}
    assert release["job"] == {"id": job["id"], "status": "SUCCEEDED"}
    assert release["snapshot"]["reviewedRows"] == REVIEWED
    assert release["snapshot"]["sourceRows"] == 6000
    learned = release["learnedFrom"]
    assert learned["totalCount"] == REVIEWED
    splits = {e["node"]["prediction"]["id"]: e["node"]["split"] for e in learned["edges"]}
    assert set(splits) == set(truth)
    assert all(e["node"]["label"] == truth[e["node"]["prediction"]["id"]]
               for e in learned["edges"])
    assert release["rows"]["reviewed_test"] == sum(s == "holdout" for s in splits.values())
    assert all(e["node"]["dataSplit"] == e["node"]["split"].upper() for e in learned["edges"])
    assert release["holdout"] == release["oldHoldout"] == {
        "totalCount": release["rows"]["reviewed_test"]}
    # ... and from a prediction: the releases trained on its label (never its holdout rows).
    for pid, split in list(splits.items())[:20]:
        used = data(team.admin(TRAINED_INTO, id=pid))["prediction"]["trainedInto"]
        assert used == ([] if split == "holdout" else [
            {"version": 2, "split": split, "dataSplit": split.upper()}])

    # As a SHADOW it scores new traffic off the response path; people review that traffic.
    more = generate(rows=120, seed=78, long_terms=0.5)
    stored = data(team.predictor(BATCH, i=frame_inputs(task, more)))["predictBatch"]
    truth.update({p["id"]: o for p, o in zip(stored, more["outcome"], strict=True)})
    assert review_everything(team, truth) == 120
    comparison = wait_for_comparison(team.admin, paired=120)
    overall = comparison["overall"]
    assert comparison["stage"] == "SHADOW" and overall["reviewed"] == 120
    assert overall["releaseAccuracy"] > overall["liveAccuracy"] + 0.05, overall

    # Canary, then LIVE, then a rollback restores release 1.
    promoted = data(team.admin(PROMOTE, v=2, s="CANARY", p=50.0))["promoteRelease"]
    assert (promoted["stage"], promoted["trafficPercent"]) == ("CANARY", 50.0)
    data(team.admin(PROMOTE, v=2, s="LIVE", p=None))
    assert data(team.admin(RELEASE, v=1))["release"]["stage"] == "RETIRED"
    rolled = data(team.admin('mutation { rollback(task: "loan_default", reason: "test") '
                             '{ version stage } }'))["rollback"]
    assert rolled == {"version": 1, "stage": "LIVE"}
    history = data(team.admin(HISTORY, v=2))["release"]["stageHistory"]
    def who(actor: str) -> str:
        return "ops" if re.fullmatch(r"key:\d+:ops", actor) else actor

    admin = "ops"
    assert [(h["fromStage"], h["toStage"], who(h["actor"])) for h in history] == [
        (None, "CANDIDATE", admin), ("CANDIDATE", "SHADOW", "system:gate"),
        ("SHADOW", "CANARY", admin), ("CANARY", "LIVE", admin), ("LIVE", "RETIRED", admin)]

    # A candidate that is worse (starved members, same feature contract) is rejected. The
    # first server stops first: on PostgreSQL its relay could otherwise take the job and
    # train it with the healthy task file.
    team.server.__exit__()
    worse = settings.model_copy(update={"tasks_dir": crippled_tasks(tmp_path / "tasks")})
    with LiveServer(worse) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        admin = Api(c, make_key(settings, "admin", "ops-2"))
        job = data(admin(RETRAIN, r="smaller models"))["retrain"]
        finished = wait_for_job(admin, job["id"])
    assert finished["status"] == "SUCCEEDED", finished
    assert finished["release"]["version"] == 3
    assert finished["release"]["gate"]["decision"] == "REJECTED"
    assert finished["release"]["stage"] == "CANDIDATE"
    # Why, in the gate's words: it loses on the source rows (starved members are about 0.06
    # less accurate there). Its gain on the reviewed rows is near zero and varies with which
    # rows are held out (about -0.02 to +0.03 on 6 discordant pairs): the first reason says
    # "less than the required" or "not significant" by chance, so it is not checked.
    reasons = finished["release"]["gate"]["reasons"]
    assert any(r.startswith("accuracy on the 1200 source held-out rows loses")
               and "more than the allowed" in r for r in reasons), reasons


def test_only_admins_retrain_and_requests_join_the_active_job(team: Team) -> None:
    for who in (team.predictor, team.reviewer):
        refused = who(RETRAIN, r="please")
        assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    first = data(team.admin(RETRAIN, r="first"))["retrain"]
    second = data(team.admin(RETRAIN, r="second"))["retrain"]
    # a training takes seconds: the second request, milliseconds later, joins the first
    assert second["id"] == first["id"] and second["requests"] == 2
    assert second["status"] in ("QUEUED", "RUNNING")
    jobs = data(team.admin('{ trainingJobs(task: "loan_default") { totalCount '
                           'edges { node { id requestedBy reason } } } }'))["trainingJobs"]
    assert jobs["totalCount"] == 1
    assert jobs["edges"][-1]["node"]["reason"] == "first"
    assert jobs["edges"][-1]["node"]["requestedBy"].endswith(":ops")


def test_release_events_follow_a_retraining_and_its_stage_changes(settings: Settings) -> None:
    key = make_key(settings, "admin", "ops")
    sink: list[dict[str, Any]] = []

    def kinds() -> list[str]:
        return [e["releaseEvents"]["kind"] for e in sink]

    async def scenario(server: LiveServer, admin: Api) -> None:
        async with subscriber.client(server.url, key) as session:
            following = asyncio.create_task(subscriber.follow(session, RELEASE_EVENTS, sink))
            await subscriber.until(lambda: server.services.events.subscribers() >= 1,
                                   "the subscription")
            job = data(await asyncio.to_thread(admin, RETRAIN, r="watch me"))["retrain"]
            await subscriber.until(lambda: "GATE_DECISION" in kinds() and
                                   "STAGE_CHANGED" in kinds(), "the end of the training")
            await asyncio.to_thread(admin, PROMOTE, v=2, s="SHADOW", p=None)
            await subscriber.until(lambda: kinds().count("STAGE_CHANGED") == 2, "the promotion")
            following.cancel()
        events = [e["releaseEvents"] for e in sink]
        progress = [e for e in events if e["kind"] == "TRAINING_PROGRESS"]
        assert len(progress) >= 3 and all(e["jobId"] == job["id"] for e in progress)
        assert [e["progress"] for e in progress] == sorted(e["progress"] for e in progress)
        assert kinds()[len(progress):] == [
            "TRAINING_FINISHED", "GATE_DECISION", "STAGE_CHANGED", "STAGE_CHANGED"]
        finished, gate, created, shadowed = events[len(progress):]
        assert (finished["status"], finished["progress"]) == ("SUCCEEDED", 1.0)
        assert (gate["version"], gate["status"]) == (2, "INSUFFICIENT_EVIDENCE")
        assert "nothing shows the candidate is better" in gate["reason"]
        assert (created["fromStage"], created["toStage"], created["version"]) == (
            None, "CANDIDATE", 2)
        assert (shadowed["fromStage"], shadowed["toStage"], shadowed["reason"]) == (
            "CANDIDATE", "SHADOW", "test")

    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        asyncio.run(scenario(server, Api(c, key)))
