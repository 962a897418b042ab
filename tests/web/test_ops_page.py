"""The ops page in a real browser: an admin sees releases with their gate and rolls one
back through the confirmation dialog, and checks a task's drift."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from app.db.engine import make_engine, make_sessionmaker
from app.drift.checks import check_task
from app.events.bus import LocalBus
from app.examples.loan import generate
from app.ml.task import TaskSpec
from app.ml.training import TrainedRelease
from app.settings import Settings
from app.training.jobs import JobContext
from tests.support.inputs import frame_inputs
from tests.support.loans import SEED, SHIFTED, SMALL
from tests.support.releases import store_all, store_with_snapshots
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

RELEASES = '{ releases(task: "loan_default") { version stage } }'


@pytest.fixture
def second_release(settings: Settings, trained: dict[str, TrainedRelease]) -> Iterator[None]:
    """loan_default v2 stored beside v1 (a CANDIDATE until promoted)."""
    def store() -> None:  # its own thread: asyncio.run must not meet Playwright's loop
        asyncio.run(store_all(settings, {"loan_default": trained["loan_default"]}))

    worker = threading.Thread(target=store)
    worker.start()
    worker.join()
    yield


@ON_SQLITE
def test_an_admin_rolls_back_a_release_after_confirming(
        second_release: None, site: Site, browser: Browser) -> None:
    admin = site.api("admin")
    page = open_page(browser, site, "/ops", site.keys["admin"])
    page.get_by_label("Task").select_option("loan_default")
    rows = page.locator("#releases-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("CANDIDATE")
    page.get_by_role("button", name="Change stage of v2").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("New stage").select_option("CANARY")
    dialog.get_by_label("Canary traffic (%)").fill("150")
    dialog.get_by_role("button", name="Change stage").click()
    expect(dialog.locator("#confirm-error")).to_have_text(
        "Canary traffic must be between 0 and 100 %.")
    dialog.get_by_label("New stage").select_option("LIVE")
    dialog.get_by_label("Reason").fill("second release")
    dialog.get_by_role("button", name="Change stage").click()
    expect(page.locator("#status")).to_have_text("v2 is now LIVE.")
    expect(rows.nth(0)).to_contain_text("LIVE")
    expect(rows.nth(1)).to_contain_text("RETIRED")
    page.get_by_role("button", name="Details of v2").click()
    expect(page.locator("#detail-title")).to_have_text("Release v2 of loan_default")
    expect(page.locator("#detail")).to_contain_text("accuracy")
    expect(page.locator("#drift-notice")).to_contain_text("No drift report stored")

    page.get_by_role("button", name="Roll back…").click()
    expect(dialog).to_contain_text("LIVE v2 is retired")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("Rollback cancelled.")
    assert {r["version"]: r["stage"] for r in admin(RELEASES)["data"]["releases"]} == {
        2: "LIVE", 1: "RETIRED"}

    page.get_by_role("button", name="Roll back…").click()
    dialog.get_by_label("Reason").fill("v2 misroutes late payers")
    screenshot(page, "ops-rollback-dialog")
    dialog.get_by_role("button", name="Roll back").click()
    expect(page.locator("#status")).to_have_text("Rolled back: v1 is LIVE again.")
    expect(rows.nth(1)).to_contain_text("LIVE")
    expect(rows.nth(0)).to_contain_text("RETIRED")
    assert {r["version"]: r["stage"] for r in admin(RELEASES)["data"]["releases"]} == {
        2: "RETIRED", 1: "LIVE"}
    history = admin('{ release(task: "loan_default", version: 1) { stageHistory '
                    "{ toStage reason } } }")["data"]["release"]["stageHistory"]
    assert history[-1] == {"toStage": "LIVE", "reason": "v2 misroutes late payers"}
    screenshot(page, "ops")


@ON_SQLITE
def test_an_admin_retrains_and_watches_the_progress_live(site: Site, browser: Browser) -> None:
    page = open_page(browser, site, "/ops", site.keys["admin"])
    expect(page.get_by_label("Task")).to_have_value("breast_cancer")
    expect(page.locator("#live")).to_have_text("Live")
    expect(page.locator("#jobs")).to_have_text("No training yet.")
    page.get_by_role("button", name="Retrain").click()
    job = page.locator("#jobs-table tbody tr").first
    expect(job).to_contain_text(re.compile("QUEUED|RUNNING|SUCCEEDED"))
    # nothing but releaseEvents moves the row on: the page does not poll
    expect(job).to_contain_text("SUCCEEDED", timeout=180_000)
    expect(job).to_contain_text("100.0 %")
    expect(job).to_contain_text("v2")
    expect(page.locator("#status")).to_contain_text("succeeded")
    expect(page.locator("#releases-table tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Details of v2").click()
    expect(page.locator("#detail")).to_contain_text("Decision:")
    expect(page.locator("#detail")).to_contain_text("The gate's comparison on held-out rows")
    expect(page.locator("#gate-test")).to_contain_text("paired rows (at least 10)")
    screenshot(page, "ops-after-training")


PROMOTE = """mutation { promoteRelease(task: "loan_default", version: 2, stage: LIVE,
  reason: "trained from a snapshot") { version stage } }"""
MADE_UNIFORM = {"home_ownership", "has_cosigner", "purpose"}
LOANS = """mutation($i: [JSON!]!) { predictBatch(task: "loan_default", inputs: $i) { id } }"""


@pytest.fixture
def release_with_reference(settings: Settings, trained: dict[str, TrainedRelease]) -> None:
    """loan_default v2 stored as a training job stores it, with the snapshot that holds its
    drift reference (v1, stored by ``settings``, has none). The server's periodic jobs are
    sent at its start only (when v1 is LIVE: nothing to check), so that the one periodic
    drift check is the test's own."""
    settings.lease_sweep_seconds = 3600.0
    worker = threading.Thread(target=asyncio.run, args=(
        store_with_snapshots(settings, trained, ["loan_default"]),))
    worker.start()
    worker.join()


def periodic_check(settings: Settings, task: TaskSpec) -> None:
    """The periodic drift check of ``task``, storing its report, in a thread."""
    async def check() -> None:
        engine = make_engine(settings.resolved_database_url)
        try:
            ctx = JobContext(make_sessionmaker(engine), {task.name: task},
                             settings.artifacts_dir, LocalBus())
            outcome = await check_task(ctx, task)
            assert outcome is not None and outcome.stored
        finally:
            await engine.dispose()

    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(check())
        except BaseException as exc:  # re-raised on the test's thread
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failures:
        raise failures[0]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_admin_checks_drift_and_sees_the_drifted_features(
        release_with_reference: None, site: Site, browser: Browser,
        example_tasks: dict[str, TaskSpec]) -> None:
    page = open_page(browser, site, "/ops", site.keys["admin"])
    page.get_by_label("Task").select_option("loan_default")
    notice = page.locator("#drift-notice")
    expect(notice).to_contain_text("No drift report stored for loan_default yet")
    page.get_by_role("button", name="Check now").click()  # LIVE v1: no snapshot
    expect(notice).to_contain_text("No drift reference: release 1 of loan_default has no "
                                   "training snapshot")

    assert site.api("admin")(PROMOTE)["data"]["promoteRelease"]["stage"] == "LIVE"
    page.get_by_label("Window").fill("1h")
    page.get_by_role("button", name="Check now").click()  # nothing predicted yet
    expect(page.locator("#drift-verdict")).to_contain_text("Not enough recent predictions")
    expect(notice).to_contain_text("Too few recent predictions")

    # the shifted loans, and every applicant now a home owner with a cosigner borrowing
    # for a car: 7 of 10 features drift, over the task's share of 0.5
    loans = generate(SMALL, SEED, shift=1.0, long_terms=0.5).assign(
        home_ownership="own", has_cosigner=True, purpose="car")
    inputs = frame_inputs(example_tasks["loan_default"], loans)
    body = site.api("predictor")(LOANS, i=inputs)
    assert "errors" not in body, body
    page.get_by_role("button", name="Check now").click()
    verdict = page.locator("#drift-verdict")
    expect(verdict).to_contain_text("⚠ Dataset drifted · 70.0 % of tested features drifted")
    expect(verdict).to_contain_text(f"{SMALL} predictions in the last 1h")
    expect(page.locator("#drift-status")).to_have_text("Checked loan_default over the last 1h.")
    drifted = page.locator("#drift-table tbody tr.drifted")
    expect(drifted.first).to_be_visible()
    names = set(drifted.locator("th").all_inner_texts())
    # riskier applicants get other answers: the outputs drift too, in their own rows
    assert names == SHIFTED | MADE_UNIFORM | {"prediction: predicted_class",
                                               "prediction: probability"}
    for i in range(len(names)):
        expect(drifted.nth(i)).to_contain_text("⚠ DRIFTED")  # said, not only coloured
    expect(page.locator("#drift-table tbody tr:not(.drifted)")).to_have_count(3)
    income = page.locator("#drift-table tbody tr", has_text="income").first
    expect(income).to_contain_text("ks")
    expect(income).to_contain_text("p-value")
    expect(income).to_contain_text("< 0.050")
    rates = page.locator("#rates-table tbody tr")
    expect(rates).to_have_count(12)
    expect(page.locator("#rates-table")).to_contain_text(f"of {SMALL}")

    page.get_by_label("Window").fill("soon")
    page.get_by_role("button", name="Check now").click()
    expect(notice).to_contain_text("Drift check refused:")
    expect(notice).to_contain_text("soon")

    periodic_check(site.settings, example_tasks["loan_default"])  # what drift.check stores
    page.reload()  # signed in still: the key is in the tab's sessionStorage
    summary = page.locator("#drift-summary-table tbody tr")
    expect(summary).to_have_count(2)
    expect(summary.filter(has_text="breast_cancer")).to_contain_text("none stored yet")
    expect(summary.filter(has_text="loan_default")).to_contain_text("⚠ Dataset drifted")
    expect(summary.filter(has_text="loan_default")).to_contain_text("income, loan_amount")
    page.get_by_label("Task").select_option("loan_default")
    expect(page.locator("#drift-task-title")).to_have_text("Drift of loan_default")
    expect(verdict).to_contain_text("stored by the periodic check")
    expect(verdict).to_contain_text("⚠ Dataset drifted")
    expect(page.locator("#drift-table tbody tr.drifted")).to_have_count(len(names))
    screenshot(page, "ops-drift")
