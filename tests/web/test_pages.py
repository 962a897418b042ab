"""The pages and their assets are served by the app itself, need no key to load, and fetch
nothing from another origin (no CDN, no build step)."""

from __future__ import annotations

import re

import httpx

from tests.web.conftest import ON_SQLITE
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


def test_nothing_is_loaded_from_another_origin() -> None:
    files = [p for p in WEB_DIR.rglob("*") if p.suffix in {".html", ".js", ".css"}]
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        assert not EXTERNAL.search(text), f"{path.name} loads from another origin"
    imports = {m for p in files for m in re.findall(r'from "(\./[^"]+)"', p.read_text())}
    assert imports and all((WEB_DIR / "static" / m).exists() for m in imports)
