"""The ops page in a real browser: an admin sees releases with their gate and rolls one
back through the confirmation dialog."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from app.ml.training import TrainedRelease
from app.settings import Settings
from tests.conftest import _store_all
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

PROMOTE = """mutation { promoteRelease(task: "loan_default", version: 2, stage: LIVE,
  reason: "second release") { version stage } }"""
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
    assert admin(PROMOTE)["data"]["promoteRelease"] == {"version": 2, "stage": "LIVE"}
    page = open_page(browser, site, "/ops", site.keys["admin"])
    page.get_by_label("Task").select_option("loan_default")
    rows = page.locator("#releases-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("LIVE")
    expect(rows.nth(1)).to_contain_text("RETIRED")
    page.get_by_role("button", name="Details of v2").click()
    expect(page.locator("#detail-title")).to_have_text("Release v2 of loan_default")
    expect(page.locator("#detail")).to_contain_text("accuracy")
    expect(page.locator("#drift")).to_contain_text("driftReport")  # the marked place

    page.get_by_role("button", name="Roll back…").click()
    dialog = page.get_by_role("dialog")
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
