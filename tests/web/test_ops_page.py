"""The ops page in a real browser: an admin sees releases with their gate and rolls one
back through the confirmation dialog."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from app.ml.training import TrainedRelease
from app.settings import Settings
from tests.conftest import _store_all
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

RELEASES = '{ releases(task: "loan_default") { version stage } }'


@pytest.fixture
def second_release(settings: Settings, trained: dict[str, TrainedRelease]) -> Iterator[None]:
    """loan_default v2 stored beside v1 (a CANDIDATE until promoted)."""
    def store() -> None:  # its own thread: asyncio.run must not meet Playwright's loop
        asyncio.run(_store_all(settings, {"loan_default": trained["loan_default"]}))

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
    expect(page.locator("#drift")).to_contain_text("driftReport")  # the marked place

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
    screenshot(page, "ops-after-training")
