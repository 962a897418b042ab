"""The reviewer page in a real browser: claim, label with the keyboard, live queue counts,
a lapsed lease, and keys of the wrong role."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Browser, Page, expect

from app.ml.task import TaskSpec
from tests.web.conftest import ON_SQLITE, Site, open_page, screenshot

ITEMS = """query($status: ReviewStatus) { reviewItems(task: "loan_default", status: $status)
  { totalCount edges { node { id status finalLabel } } } }"""


def routed(site: Site, tasks: dict[str, TaskSpec], n: int = 60) -> int:
    rows = site.predict(tasks["loan_default"], n)
    count = sum(r["route"] == "REVIEW" for r in rows)
    assert count >= 3, "the example batch routes too few predictions to review"
    return count


def items(site: Site, status: str) -> dict[str, object]:
    body = site.api("admin")(ITEMS, status=status)
    result: dict[str, object] = body["data"]["reviewItems"]
    return result


def open_review(browser: Browser, site: Site, key: str) -> Page:
    page = open_page(browser, site, "/review", key)
    page.get_by_label("Task").select_option("loan_default")
    return page


@ON_SQLITE
def test_a_reviewer_labels_with_the_keyboard_and_moves_to_the_next_item(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    waiting = routed(site, example_tasks)
    page = open_review(browser, site, site.keys["reviewer"])
    expect(page.locator("#count-waiting")).to_have_text(str(waiting))
    expect(page.locator(".queue-table tbody tr")).to_have_count(min(waiting, 25))
    page.get_by_role("button", name="Claim next").click()
    title = page.locator("#item-title")
    expect(title).to_have_text(re.compile(r"^Item [0-9a-f]{8}"))
    first = title.inner_text()
    # what a reviewer decides on: the model's label, each member's vote, the reasons, and
    # the explanation drawn as bars between base and output
    expect(page.locator("#model-label")).to_contain_text("release v1")
    expect(page.locator("#members tbody tr")).to_have_count(2)
    expect(page.locator("#reasons li").first).to_be_visible()
    expect(page.locator("#explanation svg rect").first).to_be_visible()
    expect(page.locator("#explanation svg")).to_contain_text("base value")
    expect(page.locator("#labels button")).to_have_text(["1 repaid", "2 late", "3 default"])
    expect(page.locator("#shortcuts")).to_have_text("Keys: 1\N{EN DASH}3 label · s skip")
    expect(page.locator("#lease-left")).to_have_text(re.compile(r"^\d+:\d\d left$"))
    screenshot(page, "review")

    page.keyboard.press("2")
    expect(page.locator("#status")).to_contain_text("“late” (resolved)")
    expect(title).to_have_text(re.compile(r"^Item [0-9a-f]{8}"))
    assert title.inner_text() != first  # straight on to the next item
    resolved = items(site, "RESOLVED")
    assert resolved["totalCount"] == 1
    assert [e["node"]["finalLabel"] for e in resolved["edges"]] == ["late"]  # type: ignore[attr-defined]
    expect(page.locator("#count-waiting")).to_have_text(str(waiting - 2))

    page.keyboard.press("s")  # skip: the item goes back to the queue
    expect(page.locator("#status")).to_contain_text("Skipped item")
    expect(title).to_have_text("No item open")
    expect(page.locator("#count-waiting")).to_have_text(str(waiting - 1))
    assert items(site, "CLAIMED")["totalCount"] == 0
    page.get_by_role("button", name="Claim next").click()  # the skipped one waits for others
    expect(title).to_have_text(re.compile(r"^Item [0-9a-f]{8}"))
    assert items(site, "CLAIMED")["totalCount"] == 1


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_second_reviewer_sees_the_queue_change_live(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    waiting = routed(site, example_tasks)
    rita = open_review(browser, site, site.keys["reviewer"])
    rob = open_review(browser, site, site.extra_keys["reviewer2"])
    for page in (rita, rob):
        expect(page.locator("#live")).to_have_text("Live")
        expect(page.locator("#count-waiting")).to_have_text(str(waiting))
    rita.get_by_role("button", name="Claim next").click()
    expect(rob.locator("#count-waiting")).to_have_text(str(waiting - 1))  # no reload
    expect(rob.locator("#count-claimed")).to_have_text("1")
    more = sum(r["route"] == "REVIEW" for r in site.predict(example_tasks["loan_default"], 30,
                                                             seed=9))
    expect(rob.locator("#count-waiting")).to_have_text(str(waiting - 1 + more))
    rita.keyboard.press("1")
    expect(rob.locator("#count-claimed")).to_have_text("1")  # rita's next item
    expect(rob.locator("#count-waiting")).to_have_text(str(waiting - 2 + more))


@ON_SQLITE
@pytest.mark.parametrize("site", [{"lease_seconds": 3.0}], indirect=True)
def test_a_lapsed_lease_says_so_and_offers_to_claim_again(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    routed(site, example_tasks)
    page = open_review(browser, site, site.keys["reviewer"])
    page.get_by_role("button", name="Claim next").click()
    expect(page.locator("#item-title")).to_have_text(re.compile(r"^Item [0-9a-f]{8}"))
    first = page.locator("#item-title").inner_text()
    problem = page.locator("#lease-problem")
    expect(problem).to_contain_text("Your lease on this item expired", timeout=10_000)
    expect(page.locator("#lease-left")).to_have_text("expired")
    page.keyboard.press("1")  # too late: the server refuses the label
    expect(problem).to_contain_text(re.compile(r"LEASE_(EXPIRED|STALE)"))
    assert items(site, "RESOLVED")["totalCount"] == 0
    screenshot(page, "review-lease-expired")
    page.get_by_role("button", name="Claim it again").click()
    expect(page.locator("#status")).to_contain_text("again")
    expect(page.locator("#item-title")).to_have_text(first)
    expect(problem).to_be_hidden()


@ON_SQLITE
@pytest.mark.parametrize("site", [{"hide_explanation": True}], indirect=True)
def test_a_hidden_explanation_waits_for_the_button(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    routed(site, example_tasks)
    page = open_review(browser, site, site.keys["reviewer"])
    page.get_by_role("button", name="Claim next").click()
    expect(page.locator("#model-label")).to_contain_text("release v1")
    expect(page.locator("#explanation svg")).to_have_count(0)
    page.get_by_role("button", name="Show explanation").click()
    expect(page.locator("#explanation svg rect").first).to_be_visible()
    expect(page.locator("#explanation figcaption")).to_contain_text("from base")


@ON_SQLITE
def test_keys_of_the_wrong_role_or_no_key_are_refused_with_a_message(
        site: Site, browser: Browser) -> None:
    page = browser.new_context().new_page()
    page.goto(site.url + "/review")
    error = page.locator("#signin-error")
    page.get_by_label("API key").fill(site.keys["predictor"])
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_have_text('This key ("app") has the role predictor. The review page '
                               "needs a reviewer or admin key.")
    expect(page.locator("#app-view")).to_be_hidden()
    assert page.evaluate("Object.keys(sessionStorage)") == []
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_contain_text("not valid or was revoked")
    screenshot(page, "signin-refused")
    page.goto(site.url + "/ops")
    page.get_by_label("API key").fill(site.keys["reviewer"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("The ops page needs an admin key.")
    assert site.keys["reviewer"] not in page.url


FOCUSED = """() => { const e = document.activeElement;
  return (e.getAttribute('aria-label') || e.labels?.[0]?.textContent || e.textContent).trim()
    .replace(/\\s+/g, ' '); }"""


@ON_SQLITE
def test_the_review_page_works_from_the_keyboard_alone(
        site: Site, browser: Browser, example_tasks: dict[str, TaskSpec]) -> None:
    routed(site, example_tasks)
    page = browser.new_context().new_page()
    page.goto(site.url + "/review")
    expect(page.get_by_label("API key")).to_be_focused()  # the form takes focus
    page.keyboard.type(site.keys["reviewer"])
    page.keyboard.press("Enter")
    expect(page.locator("#app-view")).to_be_visible()
    expect(page.locator("#main")).to_be_focused()
    page.reload()  # the key stays for the tab: signed in, focus from the top
    expect(page.get_by_label("Task")).to_have_value("breast_cancer")
    order = []
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate(FOCUSED))
    assert order == ["Skip to content", "Arbiter", "Review", "Audit", "Ops", "Sign out", "Task",
                     "Claim next"]
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # a visible focus ring
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("ArrowDown")  # the task select: loan_default
    expect(page.get_by_label("Task")).to_have_value("loan_default")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#item-title")).to_be_focused()
    page.keyboard.press("3")
    expect(page.locator("#status")).to_contain_text("“default”")
