"""The pages and their assets are served by the app itself, need no key to load, and fetch
nothing from another origin (no CDN, no build step)."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Browser, ConsoleMessage

from tests.web.conftest import ON_SQLITE, Site
from web.pages import PAGES, WEB_DIR

EXTERNAL = re.compile(r"""(?:src|href|url|from|import|fetch)\s*[=(]?\s*["']?(?:https?:)?//""")


@ON_SQLITE
def test_pages_and_assets_are_served_without_a_key(http: httpx.Client) -> None:
    for page in PAGES:
        response = http.get(f"/{page}")
        assert response.status_code == 200, page
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "img-src 'self' data: blob:;" in policy  # pictures fetched with the key
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', response.text):
            assert http.get(asset).status_code == 200, asset
    script = http.get("/static/review.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert http.get("/static/nothing.js").status_code == 404
    assert http.get("/static/../pages.py").status_code == 404


@ON_SQLITE
def test_the_favicon_is_served(http: httpx.Client) -> None:
    icon = http.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.lstrip().startswith("<svg") and "</svg>" in icon.text


@ON_SQLITE
def test_pages_load_without_a_console_error(browser: Browser, site: Site) -> None:
    for name in PAGES:
        page = browser.new_context().new_page()
        errors: list[str] = []

        def record(message: ConsoleMessage, errors: list[str] = errors) -> None:
            if message.type == "error":
                errors.append(f"{message.text} ({message.location.get('url')})")

        page.on("console", record)
        page.goto(f"{site.url}/{name}", wait_until="networkidle")
        page.goto(f"{site.url}/favicon.ico", wait_until="networkidle")
        assert not errors, (name, errors)
        page.context.close()


@ON_SQLITE
def test_the_page_charts_count_the_folded_features_in_words(browser: Browser,
                                                            site: Site) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{site.url}/review")
    folded = page.evaluate("""async () => {
      const { chartRows } = await import("/static/chart.js");
      const explanation = (n) => ({ contributions: Array.from({ length: n }, (_, i) => (
        { feature: `f${i}`, value: i, shap: 1 / (i + 1), derived: false })) });
      return [11, 12].map((n) => chartRows(explanation(n), 10).at(-1).label);
    }""")
    assert folded == ["1 other feature", "2 other features"]
    page.context.close()


def test_nothing_is_loaded_from_another_origin() -> None:
    vendored = WEB_DIR / "static" / "graphiql"  # GraphiQL's bundle: tests/web/test_graphiql.py
    files = [p for p in WEB_DIR.rglob("*") if p.suffix in {".html", ".js", ".css"}
             and vendored not in p.parents]
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        assert not EXTERNAL.search(text), f"{path.name} loads from another origin"
    imports = {m for p in files for m in re.findall(r'from "(\./[^"]+)"', p.read_text())}
    assert imports and all((WEB_DIR / "static" / m).exists() for m in imports)
