"""Pipelines trained elsewhere (a notebook run as its own process writes skops files) come in
with `arbiter members import` or `artifact =` in the task file, serve over GraphQL with exact
explanations, retrain from reviewers' labels as refit clones, and are refused with a message
that names the fix when they do not fit the task."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.examples.loan import generate
from app.ml.artifacts import sha256_of
from app.ml.task import TaskSpec
from app.settings import EXAMPLE_TASKS_DIR, Settings
from tests.support.documents import (
    CONTRACT,
    PROMOTE,
    RETRAIN,
    check_prediction,
    data,
    wait_for_job,
)
from tests.support.inputs import frame_inputs
from tests.support.processes import arbiter
from tests.support.server import LiveServer, People

ROOT = Path(__file__).resolve().parents[2]
TASK = "loan_default"
MEMBERS = """query($v: Int!) { release(task: "loan_default", version: $v) {
  version stage snapshot { reviewedRows } members { name algorithm weight sha256 origin } } }"""
BATCH = 'mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id route } }'
CLAIM = """mutation { claimReview(task: "loan_default") {
  leaseToken item { prediction { id } } } }"""
SUBMIT = "mutation($t: String!, $l: String!) { submitReview(leaseToken: $t, label: $l) { id } }"
RELEASES = '{ releases(task: "loan_default") { version } }'


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind of pipeline, fitted and written by a separate process."""
    folder = tmp_path_factory.mktemp("notebook")
    files = {}
    for kind in ("boosted", "logistic", "svc", "wrong_columns", "wrong_classes", "untrusted"):
        files[kind] = folder / f"{kind}.skops"
        subprocess.run([sys.executable, "-m", "tests.support.notebook", kind, str(files[kind])],
                       cwd=ROOT, check=True, capture_output=True, timeout=600)
    return files


@pytest.fixture
def people(settings: Settings) -> Iterator[People]:
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        yield People(c, settings)


def _import(env: dict[str, str], name: str, file: Path, *more: str) -> str:
    done = arbiter(env, "members", "import", TASK, name, str(file), *more)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _members(api: Any, version: int) -> dict[str, dict[str, Any]]:
    release = data(api(MEMBERS, v=version))["release"]
    return {m["name"]: m for m in release["members"]}


def _go_live(api: Any, version: int) -> None:
    data(api(PROMOTE, task=TASK, v=version, stage="LIVE", why="imported from the notebook"))


def _review_everything(people: People, truth: dict[str, str]) -> int:
    done = 0
    while (lease := data(people.reviewer(CLAIM))["claimReview"]) is not None:
        data(people.reviewer(SUBMIT, t=lease["leaseToken"],
                             l=truth[lease["item"]["prediction"]["id"]]))
        done += 1
    return done


def test_notebook_pipelines_import_serve_exactly_and_retrain_from_labels(
    people: People, env: dict[str, str], notebook: dict[str, Path],
    example_tasks: dict[str, TaskSpec]
) -> None:
    task = example_tasks[TASK]
    assert "release 2" in _import(env, "boosted", notebook["boosted"], "--weight", "0.7")
    _go_live(people.admin, 2)
    assert "release 3" in _import(env, "logistic", notebook["logistic"])
    _go_live(people.admin, 3)

    members = _members(people.admin, 3)
    assert members["boosted"]["weight"] == 0.7 and members["logistic"]["weight"] == 0.4
    for name, estimator in (("boosted", "HistGradientBoostingClassifier"),
                            ("logistic", "LogisticRegression")):
        origin = members[name]["origin"]
        assert origin == {"kind": "imported", "file": str(notebook[name]),
                          "sha256": sha256_of(notebook[name]), "estimator": estimator}
    assert members["boosted"]["algorithm"] == "hist_gradient_boosting"

    rows = generate(rows=12, seed=5)
    truth = {}
    for row, outcome in zip(frame_inputs(task, rows), rows["outcome"], strict=True):
        p = data(people.predictor(CONTRACT, task=TASK, input=row))["predict"]
        assert p["release"] == 3
        check_prediction(task, p)  # base + contributions = the served log-odds, to 1e-6
        truth[p["id"]] = outcome  # some may be routed to review already

    # Reviewers label what the imported release routes to them; retraining refits clones.
    data(people.admin('mutation { setReleaseRouting(task: "loan_default", version: 3, '
                      'policy: {audit_rate: 1.0}) { version } }'))
    labelled = generate(rows=60, seed=8)
    stored = data(people.predictor(BATCH, i=frame_inputs(task, labelled)))["predictBatch"]
    truth |= {p["id"]: o for p, o in zip(stored, labelled["outcome"], strict=True)}
    reviewed = _review_everything(people, truth)
    assert reviewed >= 60
    job = wait_for_job(people.admin, data(people.admin(RETRAIN, r="labels"))["retrain"]["id"])
    assert job["status"] == "SUCCEEDED", job
    retrained = data(people.admin(MEMBERS, v=4))["release"]
    assert retrained["snapshot"]["reviewedRows"] == reviewed
    refit = {m["name"]: m for m in retrained["members"]}
    for name in ("boosted", "logistic"):
        assert refit[name]["origin"]["kind"] == "refit"
        assert refit[name]["origin"]["sha256"] == sha256_of(notebook[name])
        assert refit[name]["sha256"] != members[name]["sha256"]  # fitted anew
    _go_live(people.admin, 4)
    p = data(people.predictor(CONTRACT, task=TASK, input=frame_inputs(task, rows)[0]))["predict"]
    assert p["release"] == 4
    check_prediction(task, p)


@pytest.mark.parametrize(("kind", "message"), [
    ("svc", "SVC has no exact explainer in Arbiter; supported estimators: "
            "DecisionTreeClassifier, ExtraTreesClassifier, GradientBoostingClassifier, "
            "HistGradientBoostingClassifier, LogisticRegression, RandomForestClassifier"),
    ("wrong_columns", "expects columns ['order_count'] that loan_default does not have"),
    ("wrong_classes", "predicts classes ['default', 'late', 'repaid'], not loan_default's "
                      "['repaid', 'late', 'default']"),
    ("untrusted", "holds untrusted types: ['__main__.Clipper']"),
])
def test_unfit_pipelines_are_refused_and_nothing_is_written(
    settings: Settings, env: dict[str, str], notebook: dict[str, Path], kind: str,
    message: str
) -> None:
    done = arbiter(env, "members", "import", TASK, "boosted", str(notebook[kind]))
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split()), done.stderr
    releases = arbiter(env, "releases", TASK)
    assert releases.returncode == 0 and "CANDIDATE" not in releases.stdout


def test_a_task_file_member_comes_from_its_artifact(
    env: dict[str, str], notebook: dict[str, Path], tmp_path: Path, people: People
) -> None:
    folder = tmp_path / "tasks"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "boosted.skops").write_bytes(notebook["boosted"].read_bytes())
    text = (EXAMPLE_TASKS_DIR / f"{TASK}.toml").read_text()
    declared = 'params = { max_iter = 120, learning_rate = 0.1, max_leaf_nodes = 6 }'
    assert declared in text
    (folder / f"{TASK}.toml").write_text(
        text.replace(declared, 'artifact = "models/boosted.skops"'))
    done = arbiter({**env, "ARBITER_TASKS_DIR": str(folder)}, "train", TASK)
    assert done.returncode == 0, done.stderr
    members = _members(people.admin, 2)
    assert members["boosted"]["origin"] == {
        "kind": "imported", "file": str(folder / "models" / "boosted.skops"),
        "sha256": sha256_of(notebook["boosted"]), "estimator": "HistGradientBoostingClassifier"}
    assert members["logistic"]["origin"] == {}
