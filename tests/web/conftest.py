"""Browser tests: Debian's Chromium (never a downloaded browser) driven by Playwright against
the real app under uvicorn. Skipped when /usr/bin/chromium is missing locally, failed under
CI=true (.ci/run installs it).

Playwright's sync API keeps an event loop running on the test's thread, so everything that
calls ``asyncio.run`` (keys, releases) happens in fixtures set up before the browser."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.ml.task import TaskSpec
from app.settings import Settings
from tests.support.databases import IN_CI
from tests.support.inputs import example_inputs
from tests.support.server import Api, LiveServer, make_key

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
ROLES = {"reviewer": "rita", "admin": "ops", "auditor": "audit", "predictor": "app"}
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
BATCH = """mutation($task: String!, $i: [JSON!]!) { predictBatch(task: $task, inputs: $i)
  { id route label createdAt } }"""


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (Debian: apt-get install -y chromium)"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (.ci/run installs it)")
    pytest.skip(f"{message}; install it to run the browser tests")


@dataclass
class Site:
    """A live server, one key per role, and GraphQL clients with them."""

    url: str
    settings: Settings
    keys: dict[str, str]
    client: httpx.Client
    extra_keys: dict[str, str] = field(default_factory=dict)

    def api(self, role: str) -> Api:
        return Api(self.client, self.keys.get(role) or self.extra_keys[role])

    def predict(self, task: TaskSpec, n: int, seed: int = 4) -> list[dict[str, Any]]:
        body = self.api("predictor")(BATCH, task=task.name, i=example_inputs(task, n, seed=seed))
        assert "errors" not in body, body
        rows: list[dict[str, Any]] = body["data"]["predictBatch"]
        return rows


@pytest.fixture
def site(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Site]:
    """The app with ``request.param`` review-policy overrides (e.g. a short lease)."""
    review = getattr(request, "param", None)
    keys = {role: make_key(settings, role, name) for role, name in ROLES.items()}
    extra = {"reviewer2": make_key(settings, "reviewer", "rob")}
    with LiveServer(settings, review) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield Site(server.url, settings, keys, client, extra)


@pytest.fixture
def browser(site: Site) -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Browser, site: Site, path: str, key: str,
              viewport: dict[str, int] = DESKTOP,
              prepare: Callable[[Page], None] | None = None) -> Page:
    """A fresh browser context (its own sessionStorage) signed in on ``path``; ``prepare``
    sees the page before it loads (to route its requests)."""
    page = browser.new_context(viewport=viewport).new_page()  # type: ignore[arg-type]
    if prepare is not None:
        prepare(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(site.url + path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app-view")).to_be_visible()
    assert not errors, errors
    return page


def screenshot(page: Page, name: str) -> None:
    """The page at 1280x800 and at phone width, full length, under .artifacts/screenshots."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("1280x800", DESKTOP), ("375x812", PHONE)):
        page.set_viewport_size(size)  # type: ignore[arg-type]
        page.wait_for_timeout(150)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
        wide = page.evaluate("document.documentElement.scrollWidth")
        assert wide <= size["width"], f"{name} scrolls sideways at {label}: {wide} px wide"
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
