"""The dashboard at /ui/ in a real headless Chromium against a real platform, plus its API
routes and cookie sessions over plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningPlatform, start_platform, wait_until
from tests.ui.browser import ARGS, CHROMIUM, DIST, GREETER, deploy_two_versions, unavailable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = start_platform(tmp_path_factory.mktemp("dashboard"))
    deploy_two_versions(running)
    # Invoked by the other tests, so the end-to-end test's counts start at zero.
    running.client().deploy(GREETER, name="side")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    assert DIST.exists(), "the dashboard is not built: run `make ui`"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, dash: RunningPlatform) -> Iterator[Any]:
    context = browser.new_context(base_url=dash.url, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.csp_errors = []  # type: ignore[attr-defined]

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            page.csp_errors.append(message.text)

    page.on("console", on_console)
    yield page
    context.close()


def login(page: Any, key: str) -> None:
    page.goto("/ui/")
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("login").click()


def session_cookie(dash: RunningPlatform, key: str) -> str:
    response = httpx.post(
        f"{dash.url}/ui/login", json={"key": key}, headers={"x-cumulo-csrf": "1"}, timeout=10
    )
    assert response.status_code == 200, response.text
    cookie = response.headers["set-cookie"]
    return cookie.split(";")[0].split("=", 1)[1]


# ---------------------------------------------------------------- in the browser
def test_dashboard_end_to_end(page: Any, dash: RunningPlatform) -> None:
    from playwright.sync_api import expect

    login(page, dash.api_key)
    # The function list: the function, both versions, the split.
    row = page.get_by_test_id("function-greeter")
    expect(row).to_contain_text("v1")
    expect(row).to_contain_text("v2")
    expect(row.get_by_test_id("traffic-bar")).to_contain_text("v1 100%")

    # The session cookie: HttpOnly, Secure, SameSite=Strict; the key is nowhere in storage.
    cookies = {c["name"]: c for c in page.context.cookies()}
    cookie = cookies["cumulo_session"]
    assert cookie["httpOnly"]
    assert cookie["secure"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["value"] != dash.api_key
    assert dash.api_key not in cookie["value"]
    stored = page.evaluate(
        "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])"
    )
    assert dash.api_key not in stored
    assert "cmo_" not in stored
    assert "cumulo_session" not in page.evaluate("() => document.cookie")

    # The function page: invoke from the form, watch the live count rise.
    row.get_by_role("link", name="greeter").click()
    expect(page.get_by_test_id("function-name")).to_have_text("greeter")
    expect(page.get_by_test_id("total-count")).to_have_text("0")
    expect(page.get_by_test_id("chart-rate").locator("canvas")).to_have_count(1)
    page.get_by_test_id("invoke-body").fill('{"name": "from-the-page"}')
    page.get_by_test_id("invoke").click()
    expect(page.get_by_test_id("invoke-status")).to_contain_text("200")
    response = json.loads(page.get_by_test_id("invoke-response").inner_text())
    assert response == {"hello": "from-the-page", "version": "1"}
    expect(page.get_by_test_id("total-count")).to_have_text("1", timeout=10_000)
    expect(page.get_by_test_id("total-cold")).to_have_text("1")
    expect(page.get_by_test_id("total-p50")).to_contain_text("ms")

    page.get_by_test_id("invoke-body").fill('{"name": "again", "fail": true}')
    page.get_by_test_id("invoke").click()
    expect(page.get_by_test_id("invoke-status")).to_contain_text("500")
    expect(page.get_by_test_id("total-count")).to_have_text("2", timeout=10_000)
    expect(page.get_by_test_id("total-errors")).to_have_text("1")

    # Recent invocations, each with its own log line.
    expect(page.get_by_test_id("invocation")).to_have_count(2, timeout=10_000)
    expect(page.get_by_test_id("recent")).to_contain_text("from-the-page", timeout=10_000)
    first = page.get_by_test_id("invocation").filter(has_text="from-the-page")
    expect(first.get_by_test_id("log-line")).to_contain_text("greeted")

    # Workers per function: the invocation left one warm worker.
    expect(page.get_by_test_id("workers")).to_contain_text("v1")

    # Traffic: move 30% to version 2 on the page, then check through the API.
    page.get_by_test_id("weight-2").fill("30")
    page.get_by_test_id("weight-2").press("Tab")
    expect(page.get_by_test_id("weight-1")).to_have_value("70")
    page.get_by_test_id("apply-traffic").click()
    expect(page.get_by_test_id("traffic-message")).to_have_text("Traffic updated.")
    expect(page.get_by_test_id("traffic").get_by_test_id("traffic-bar")).to_contain_text("v2 30%")
    assert dash.client().function("greeter")["traffic"] == {"1": 70, "2": 30}

    # The audit page lists that change, made by this key through its session.
    page.get_by_role("link", name="Audit log").click()
    event = page.get_by_test_id("audit-event").filter(has_text="/functions/greeter/traffic")
    expect(event.first).to_contain_text("PUT")
    # The platform key's own login is on the platform's chain.
    page.get_by_role("button", name="platform").click()
    expect(page.get_by_test_id("audit")).to_contain_text("ui.login")

    # Usage: the metering route's table, or a plain notice where there is none.
    page.get_by_role("link", name="Usage & cost").click()
    expect(
        page.get_by_test_id("usage").or_(page.get_by_test_id("usage-unavailable"))
    ).to_be_visible()

    assert page.csp_errors == []

    # Log out: the cookie is gone and the API refuses the old session.
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("api-key")).to_be_visible()
    assert "cumulo_session" not in {c["name"] for c in page.context.cookies()}


def test_wrong_key_shows_an_error(page: Any) -> None:
    from playwright.sync_api import expect

    login(page, "cmo_" + "x" * 43)
    expect(page.get_by_test_id("login-error")).to_contain_text("invalid API key")
    assert page.context.cookies() == []


def test_cookie_post_needs_the_csrf_header(page: Any, dash: RunningPlatform) -> None:
    from playwright.sync_api import expect

    login(page, dash.api_key)
    expect(page.get_by_test_id("function-greeter")).to_be_visible()
    # The browser's own cookie jar, from outside any page: no header, no Origin.
    request = page.context.request
    url = f"{dash.url}/fn/default/side"
    refused = request.post(url, data='{"name": "csrf"}')
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "csrf"
    foreign = request.post(url, data="{}", headers={"origin": "http://evil.example"})
    assert foreign.status == 403
    allowed = request.post(url, data='{"name": "ok"}', headers={"x-cumulo-csrf": "1"})
    assert allowed.status == 200, allowed.text()
    # Reading needs no header.
    assert request.get(f"{dash.url}/v1/namespaces/default/functions").status == 200


# ---------------------------------------------------------------- over plain HTTP
def test_ui_headers_and_assets(dash: RunningPlatform) -> None:
    if not DIST.exists():
        pytest.skip(unavailable() or "the dashboard is not built")
    with httpx.Client(base_url=dash.url, timeout=10) as http:
        index = http.get("/ui/")
        assert index.status_code == 200
        csp = index.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert index.headers["cache-control"] == "no-cache"
        assert "<script>" not in index.text  # no inline script
        asset = next(part.split('"')[0] for part in index.text.split('src="')[1:])
        js = http.get(asset)
        assert js.status_code == 200
        assert "immutable" in js.headers["cache-control"]
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        again = http.get(asset, headers={"if-none-match": js.headers["etag"]})
        assert again.status_code == 304
        assert http.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
        assert http.get("/ui/nope.js").status_code == 404
        # Login itself needs the CSRF header (no login CSRF) and a JSON body.
        assert http.post("/ui/login", json={"key": dash.api_key}).status_code == 403
        bad = http.post("/ui/login", content=b"key", headers={"x-cumulo-csrf": "1"})
        assert bad.status_code == 400


def test_session_ends_when_its_key_is_revoked(dash: RunningPlatform) -> None:
    created = dash.client().request(
        "POST", "/v1/keys", json={"namespace": "default", "scopes": ["read"]}
    )
    key = created.json()
    session = session_cookie(dash, key["key"])
    with httpx.Client(base_url=dash.url, timeout=10) as http:
        cookie = {"cookie": f"cumulo_session={session}"}
        whoami = http.get("/ui/session", headers=cookie).json()
        assert whoami["key_id"] == key["id"]
        assert whoami["scopes"] == ["read"]
        assert http.get("/v1/namespaces/default/functions", headers=cookie).status_code == 200
        # The session has the key's scopes, no more: read cannot deploy.
        denied = http.put(
            "/v1/namespaces/default/functions/side/traffic",
            json={"weights": {"1": 100}},
            headers={**cookie, "x-cumulo-csrf": "1"},
        )
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "missing_scope"
        assert dash.client().request("DELETE", f"/v1/keys/{key['id']}").status_code == 200
        gone = http.get("/v1/namespaces/default/functions", headers=cookie)
        assert gone.status_code == 401
        assert http.get("/ui/session", headers=cookie).status_code == 401
        # A made-up session id is not a session.
        fake = http.get("/v1/keys", headers={"cookie": "cumulo_session=made-up"})
        assert fake.status_code == 401


def test_stats_workers_and_audit_routes(dash: RunningPlatform) -> None:
    with dash.http() as http:
        check_dashboard_routes(dash, http)


def check_dashboard_routes(dash: RunningPlatform, http: httpx.Client) -> None:
    client = dash.client()
    for i in range(3):
        client.invoke("side", {"name": f"n{i}"})
    stats: dict[str, Any] = {}

    def counted() -> bool:
        stats.update(http.get("/v1/namespaces/default/functions/side/stats?window=60").json())
        return bool(stats["total"]["count"] >= 3)

    wait_until(counted, 10, "the invocations in the live stats")
    assert len(stats["buckets"]) == 60
    assert stats["buckets"][-1]["t"] == stats["now"]
    assert stats["total"]["p99_ms"] >= stats["total"]["p50_ms"] > 0
    assert http.get("/v1/namespaces/default/functions/nope/stats").status_code == 404
    assert http.get("/v1/namespaces/default/functions/side/stats?window=0").status_code == 400

    workers = http.get("/v1/namespaces/default/workers").json()
    assert workers["functions"]["side"]["total"] >= 1

    client.set_secret("DASH_SECRET", "s3cr3t-value")
    page = http.get("/v1/audit", params={"namespace": "default", "limit": 2}).json()
    assert len(page["events"]) == 2
    assert page["events"][0]["seq"] > page["events"][1]["seq"]
    assert "secrets/DASH_SECRET" in page["events"][0]["target"]
    assert "s3cr3t-value" not in json.dumps(page)
    older = http.get(
        "/v1/audit", params={"namespace": "default", "before": page["next_before"]}
    ).json()
    assert all(e["seq"] < page["next_before"] for e in older["events"])

    # A tenant's admin key reads its own namespace's log only; a read key none.
    def key(scope: str) -> dict[str, str]:
        made = client.request("POST", "/v1/keys", json={"namespace": "other", "scopes": [scope]})
        return {"authorization": f"Bearer {made.json()['key']}"}

    admin, reader = key("admin"), key("read")
    with httpx.Client(base_url=dash.url, timeout=10) as as_tenant:
        assert as_tenant.get("/v1/audit?namespace=default", headers=admin).status_code == 404
        assert as_tenant.get("/v1/audit", headers=admin).json()["namespace"] == "other"
        assert as_tenant.get("/v1/audit", headers=reader).status_code == 403
