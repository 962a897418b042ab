"""GraphiQL on GET /graphql works without internet: its scripts and styles come from this
server (vendored, pinned, licences kept), the headers pane starts with the Authorization
header, and a query runs with a key. Every request the browser makes is to this server."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect

from app.ml.task import TaskSpec
from tests.web.conftest import ON_SQLITE, Site
from web.pages import WEB_DIR

VENDORED = WEB_DIR / "static" / "graphiql"


@ON_SQLITE
def test_graphiql_page_and_its_assets_come_from_this_server(http: httpx.Client) -> None:
    page = http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/graphiql/graphiql.min.js" in assets
    assert all(a.startswith("/static/") for a in assets), assets
    for asset in assets:
        assert http.get(asset).status_code == 200, asset
    versions = (VENDORED / "VERSIONS").read_text()
    assert "graphiql 3.8.3 sha512-" in versions and "react 18.2.0 " in versions
    for name in ("graphiql", "react", "react-dom"):
        assert "MIT License" in (VENDORED / f"LICENSE.{name}").read_text()


@ON_SQLITE
def test_graphiql_renders_and_runs_a_query_offline(browser: Browser, site: Site,
                                                  example_tasks: dict[str, TaskSpec]) -> None:
    context = browser.new_context()
    requested: list[str] = []
    outside: list[str] = []

    def only_here(route: Route) -> None:  # the machine is "offline": nothing else answers
        url = route.request.url
        requested.append(url)
        if url.startswith(site.url + "/"):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", only_here)
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    errors: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", record)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{site.url}/graphql", wait_until="networkidle")
    expect(page.locator(".graphiql-container")).to_be_visible()
    headers = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
    expect(headers).to_contain_text('"Authorization": "Bearer <your API key>"')

    page.locator(".graphiql-execute-button").click()  # no key yet: said, not sent
    expect(page.locator(".graphiql-response")).to_contain_text("Put your API key")

    key = site.keys["auditor"]
    page.evaluate("""(key) => {
      const editor = [...document.querySelectorAll(".CodeMirror")]
        .find((e) => e.CodeMirror.getValue().includes("Authorization"));
      editor.CodeMirror.setValue(JSON.stringify({ Authorization: `Bearer ${key}` }));
    }""", key)
    run(page, "{ me { role } }")
    result = page.locator(".graphiql-response")
    expect(result).to_contain_text('"role": "AUDITOR"')
    page.get_by_label("Re-fetch GraphQL schema").click()  # the schema loads with the key
    page.get_by_label("Show Documentation Explorer").click()
    expect(page.locator(".graphiql-doc-explorer")).to_contain_text("Mutation")

    # a subscription: the key from the headers pane goes in connection_init
    run(page, 'subscription { predictions(task: "loan_default") { id task } }')
    expect(page.locator(".graphiql-execute-button")).to_have_attribute(
        "aria-label", re.compile("Stop"))
    [stored] = site.predict(example_tasks["loan_default"], 1)
    expect(result).to_contain_text(stored["id"])
    page.locator(".graphiql-execute-button").click()  # stop it
    page.wait_for_load_state("networkidle")

    assert sockets, "the subscription went over a websocket"
    assert not outside, f"fetched from outside: {outside}"
    assert requested and all(u.startswith(site.url + "/") for u in requested), requested
    ws_origin = site.url.replace("http://", "ws://")
    assert all(u.startswith(ws_origin) for u in sockets), sockets
    assert any(u.endswith("/graphql") for u in requested)
    assert not errors, errors
    context.close()


def run(page: Page, query: str) -> None:
    """Put ``query`` in GraphiQL's editor and press its run button."""
    page.evaluate("""(query) => document.querySelector(".graphiql-query-editor .CodeMirror")
      .CodeMirror.setValue(query)""", query)
    page.wait_for_timeout(500)  # GraphiQL parses the editor's text after a short debounce
    page.locator(".graphiql-execute-button").click()
