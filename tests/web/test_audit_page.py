"""The audit page in a real browser: an auditor finds a prediction by its filters and opens
its story (reviews, explanation picture, audit events), verifies the audit chain and
exports a time range as JSON Lines; a predictor key is refused."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from app.audit.events import export_line, iter_events, verify_lines
from app.db.engine import make_engine, make_sessionmaker
from app.ml.task import TaskSpec
from app.settings import Settings
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

COUNT = """query($label: String, $after: DateTime) { predictions(task: "loan_default",
  route: REVIEW, label: $label, createdAfter: $after) { totalCount } }"""


@ON_SQLITE
def test_an_auditor_finds_a_prediction_by_filters_and_opens_it(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    site.predict(example_tasks["breast_cancer"], 10)
    rows = site.predict(example_tasks["loan_default"], 40)
    target = next(r for r in rows if r["route"] == "REVIEW")
    auditor = site.api("auditor")
    start = datetime.now(UTC) - timedelta(hours=1)
    expected = auditor(COUNT, label=target["label"], after=start.isoformat())
    matching = expected["data"]["predictions"]["totalCount"]
    assert 1 <= matching < len(rows)

    page = open_page(browser, site, "/audit", site.keys["auditor"])
    expect(page.locator("#results-count")).to_contain_text("predictions match")
    page.get_by_label("Task").select_option("loan_default")
    page.get_by_label("Route").select_option("REVIEW")
    page.get_by_label("Model's label").select_option(target["label"])
    local = page.evaluate(  # an hour ago in the browser's own time zone, as the input wants
        "() => { const d = new Date(Date.now() - 3600e3); d.setMinutes(d.getMinutes() - "
        "d.getTimezoneOffset()); return d.toISOString().slice(0, 16); }")
    page.get_by_label("From (local time)").fill(local)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#results-count")).to_have_text(
        f"{matching} prediction{'s' if matching != 1 else ''} match.")
    results = page.locator("#results-table tbody tr")
    expect(results).to_have_count(matching)
    for i in range(matching):
        expect(results.nth(i)).to_contain_text("REVIEW")
        expect(results.nth(i)).to_contain_text(target["label"])

    page.get_by_role("button", name=f"Open prediction {target['id']}").click()
    expect(page.locator("#detail-title")).to_have_text(f"Prediction {target['id']}")
    detail = page.locator("#detail")
    expect(detail).to_contain_text("loan_amount")  # the input
    expect(detail.locator("svg rect").first).to_be_visible()  # the explanation chart
    expect(detail).to_contain_text("no release yet")  # trainedInto
    expect(detail.locator("#explanation-picture")).to_be_visible()
    screenshot(page, "audit")

    page.get_by_label("Until (local time)").fill(local)  # until before from: said so
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#filter-error")).to_have_text("“From” must be before “Until”.")


CLAIM = """mutation { claimReview(task: "loan_default") { leaseToken
  item { prediction { id } } } }"""
SUBMIT = """mutation($t: String!) { submitReview(leaseToken: $t, label: "late",
  comment: "income checked by phone") { status } }"""
VERIFY = "{ verifyAuditLog { ok checked headHash } }"
EVENT_COUNT = """query($since: DateTime) { auditEvents(since: $since, first: 1) { totalCount } }"""
LOCAL_HOUR_AGO = ("() => { const d = new Date(Date.now() - 3600e3); d.setMinutes(d.getMinutes() - "
                  "d.getTimezoneOffset()); return d.toISOString().slice(0, 16); }")


def cli_export(settings: Settings, since: datetime) -> list[str]:
    """The lines of the CLI export from ``since`` without attached inputs, read in a thread
    (asyncio.run must not meet Playwright's loop)."""
    lines: list[str] = []

    async def read() -> None:
        engine = make_engine(settings.resolved_database_url)
        try:
            async for e in iter_events(make_sessionmaker(engine), since, None):
                lines.append(export_line(e))
        finally:
            await engine.dispose()

    worker = threading.Thread(target=asyncio.run, args=(read(),))
    worker.start()
    worker.join()
    return lines


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_auditor_reads_a_reviewed_predictions_story_verifies_and_exports(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec],
        tmp_path: Path) -> None:
    refused = browser.new_context().new_page()
    refused.goto(site.url + "/audit")
    refused.get_by_label("API key").fill(site.keys["predictor"])
    refused.get_by_role("button", name="Sign in").click()
    expect(refused.locator("#signin-error")).to_have_text(
        'This key ("app") has the role predictor. The audit page needs an auditor or admin key.')
    expect(refused.locator("#app-view")).to_be_hidden()
    refused.context.close()

    site.predict(example_tasks["loan_default"], 40)
    lease = site.api("reviewer")(CLAIM)["data"]["claimReview"]
    target = lease["item"]["prediction"]["id"]
    assert site.api("reviewer")(SUBMIT, t=lease["leaseToken"])["data"]["submitReview"][
        "status"] == "RESOLVED"

    page = open_page(browser, site, "/audit", site.keys["auditor"])
    page.get_by_label("Task").select_option("loan_default")
    page.get_by_label("Status").select_option("REVIEWED")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#results-count")).to_have_text("1 prediction match.")
    page.get_by_role("button", name=f"Open prediction {target}").click()
    detail = page.locator("#detail")
    expect(page.locator("#detail-title")).to_have_text(f"Prediction {target}")
    review = page.locator("#reviews-table tbody tr")
    expect(review).to_have_count(1)
    for text in ("rita", "late", "income checked by phone", "review"):
        expect(review).to_contain_text(text)
    expect(detail).to_contain_text("Final label")
    expect(detail.locator("#events-list")).to_contain_text("review.resolved")
    expect(detail.locator("#events-list")).to_contain_text("prediction.made")
    expect(detail).to_contain_text("Artifact SHA-256")  # the release's members
    picture = page.locator("#explanation-picture")
    expect(picture).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.getElementById('explanation-picture');"
        " return i && i.complete && i.naturalWidth > 0; }")
    assert picture.evaluate("i => i.naturalWidth") >= 700
    assert (picture.get_attribute("src") or "").startswith("blob:")  # fetched with the key
    assert f"explaining why prediction {target} is" in (picture.get_attribute("alt") or "")
    with page.expect_download() as png:
        page.get_by_role("button", name="Download the picture as PNG").click()
    assert png.value.suggested_filename == f"explanation-{target}.png"
    saved = tmp_path / "why.png"
    png.value.save_as(saved)
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    expected = site.api("auditor")(VERIFY)["data"]["verifyAuditLog"]
    page.get_by_role("button", name="Verify audit chain").click()
    result = page.locator("#verify-table")
    expect(result).to_contain_text("The chain is intact")
    expect(result).to_contain_text(f"Events checked{expected['checked']}")
    expect(result).to_contain_text(expected["headHash"])
    expect(result).to_contain_text("First broken eventnone")

    local = page.evaluate(LOCAL_HOUR_AGO)
    page.get_by_label("From (local time)").fill(local)
    since = page.evaluate(f"() => new Date({local!r}).toISOString()")
    count = site.api("auditor")(EVENT_COUNT, since=since)["data"]["auditEvents"]["totalCount"]
    assert count > 40  # the predictions, the claim, the review, ...
    with page.expect_download() as export:
        page.get_by_role("button", name="Export JSON Lines").click()
    expect(page.locator("#export-status")).to_contain_text(f"Exported {count} audit events to")
    assert export.value.suggested_filename.endswith(".jsonl")
    lines = Path(export.value.path()).read_text().splitlines()
    assert len(lines) == count
    # what `arbiter audit export` writes (less the attached inputs), re-verifiable as a file
    assert lines == cli_export(site.settings, datetime.fromisoformat(since))
    assert set(json.loads(lines[0])) == {"id", "at", "kind", "actor", "task", "subject_type",
                                         "subject_id", "payload", "prev_hash", "hash"}
    check = verify_lines(lines)
    assert check.ok and check.checked == count, check
    screenshot(page, "audit-story")
