"""The ops page's live AUTO quality in a real browser: after outcomes show every AUTO
prediction of loan_default wrong, the admin sees the error estimate, its interval and the
bound broken, per class and overall; the first task's answer, arriving late, does not
replace it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Route, expect

from app.ml.task import TaskSpec
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

RECORD = """mutation($o: [OutcomeInput!]!) { recordOutcomes(task: "loan_default", outcomes: $o) {
  recorded } }"""


@ON_SQLITE
@pytest.mark.parametrize("site", [{"max_auto_error": 0.05, "audit_rate": 0.0}], indirect=True)
def test_an_admin_sees_live_auto_error_above_the_bound(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    task = example_tasks["loan_default"]
    auto = [p for p in site.predict(task, 80) if p["route"] == "AUTO"]
    outcomes = [{"predictionId": p["id"],
                 "label": next(c for c in task.classes if c != p["label"])} for p in auto]
    body = site.api("predictor")(RECORD, o=outcomes)
    assert body["data"]["recordOutcomes"]["recorded"] == len(auto), body
    held: list[Route] = []  # the first task's quality read, answered only after ours

    def hold_other_tasks(route: Route) -> None:
        body = route.request.post_data or ""
        if "autoQuality" in body and '"loan_default"' not in body:
            held.append(route)
        else:
            route.continue_()

    page = open_page(browser, site, "/ops", site.keys["admin"],
                     prepare=lambda p: p.route("**/graphql", hold_other_tasks))
    page.get_by_label("Task").select_option("loan_default")
    rows = page.locator("#quality-table tbody tr")
    expect(rows).to_have_count(1 + len(task.classes))
    assert len(held) == 1
    with page.expect_response("**/graphql") as late:
        held[0].continue_()
    late.value.finished()
    page.evaluate("new Promise((done) => setTimeout(done, 300))")  # the page has read it
    expect(rows).to_have_count(1 + len(task.classes))  # a late answer does not replace ours
    overall = rows.first
    expect(overall).to_contain_text("all classes")
    expect(overall).to_contain_text(f"{len(auto)}")
    expect(overall).to_contain_text("100.0 %")
    expect(overall).to_contain_text("⚠ ABOVE THE BOUND")
    expect(overall).to_contain_text("5.0 %")
    screenshot(page, "ops-quality")
