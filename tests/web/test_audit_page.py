"""The audit page in a real browser: an auditor finds a prediction by its filters and opens
it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.sync_api import Browser, expect

from app.ml.task import TaskSpec
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
    expect(detail.locator("[data-placeholder=explanation-picture]")).to_be_attached()
    screenshot(page, "audit")

    page.get_by_label("Until (local time)").fill(local)  # until before from: said so
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#filter-error")).to_have_text("“From” must be before “Until”.")
