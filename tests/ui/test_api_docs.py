"""`/docs` (Swagger UI) works offline: every file it loads comes from the gateway itself."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import RunningPlatform
from tests.ui.browser import ARGS, CHROMIUM

pytestmark = pytest.mark.slow


def test_docs_page_loads_only_files_the_gateway_serves(platform: RunningPlatform) -> None:
    page = httpx.get(f"{platform.url}/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert urls, page.text
    assert all(url.startswith("/docs/") for url in urls), urls
    for url in urls:
        asset = httpx.get(f"{platform.url}{url}")  # anonymous, like the page
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url


def test_docs_serves_no_other_file(platform: RunningPlatform) -> None:
    for path in ("/docs/index.html", "/docs/..%2F__init__.py", "/docs/swagger-ui.js.map"):
        assert httpx.get(f"{platform.url}{path}").status_code in (401, 404), path


def test_swagger_ui_renders_with_the_network_cut_off(platform: RunningPlatform) -> None:
    """Chromium may reach only the gateway: a CDN request would be refused and the page
    would stay blank. The page's own security policy lets everything it needs load."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    refused: list[str] = []
    csp_errors: list[str] = []

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(platform.url):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", route)
            page.on(
                "console",
                lambda m: (
                    csp_errors.append(m.text) if "Content Security Policy" in m.text else None
                ),
            )
            page.goto(f"{platform.url}/docs")
            page.locator(".swagger-ui .info .title").wait_for(timeout=15_000)
            assert "cumulo" in page.locator(".swagger-ui .info .title").inner_text()
            assert page.locator(".opblock").count() > 10
        finally:
            browser.close()
    assert refused == []
    assert csp_errors == []
