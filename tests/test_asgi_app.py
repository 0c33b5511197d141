"""`cumulo.app`: a whole FastAPI app served as one function, SSE streaming included."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform

SHOP = FUNCTIONS / "shop.py"


@pytest.fixture(scope="module")
def shop(platform: RunningPlatform) -> str:
    platform.client().deploy(SHOP)
    return f"{platform.url}/fn/default/shop"


def test_path_params_post_body_and_status(platform: RunningPlatform, shop: str) -> None:
    with platform.http() as http:
        created = http.post(f"{shop}/items/7", json={"name": "lamp", "price": 12.5})
        fetched = http.get(f"{shop}/items/7", params={"verbose": "true"})
        missing = http.get(f"{shop}/items/8")
        invalid = http.post(f"{shop}/items/9", json={"name": "no price"})
    assert created.status_code == 201
    assert created.json() == {"id": 7, "name": "lamp", "price": 12.5}
    assert fetched.json() == {"id": 7, "name": "lamp", "price": 12.5, "verbose": True}
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no such item"}
    assert invalid.status_code == 422  # the app's own validation answer, unchanged


def test_the_apps_error_handler_and_an_unhandled_error(
    platform: RunningPlatform, shop: str
) -> None:
    with platform.http() as http:
        handled = http.get(f"{shop}/items/13")
        unhandled = http.get(f"{shop}/boom")
    assert handled.status_code == 409
    assert handled.json() == {"detail": "out of stock: item 13"}
    assert unhandled.status_code == 500
    assert "Traceback" not in unhandled.text


def test_root_path_repeated_headers_and_no_platform_key(
    platform: RunningPlatform, shop: str
) -> None:
    with platform.http() as http:
        response = http.get(f"{shop}/whoami", headers=[("cookie", "a=1"), ("cookie", "b=2")])
    body = response.json()
    assert body["root_path"] == "/fn/default/shop"
    assert body["path"].endswith("/whoami")
    assert body["cookies"] == ["a=1", "b=2"]
    assert body["authorization"] is None


def test_sse_arrives_as_it_is_produced(platform: RunningPlatform, shop: str) -> None:
    arrivals: list[tuple[float, str]] = []
    with (
        platform.http() as http,
        http.stream("GET", f"{shop}/ticks", params={"n": 3, "gap": 0.4}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        start = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.monotonic() - start, line))
    assert [line for _, line in arrivals] == ["data: tick 0", "data: tick 1", "data: tick 2"]
    # The first event came long before the last was produced (0.8 s later): streamed.
    assert arrivals[0][0] < arrivals[-1][0] - 0.5


def test_an_app_serves_concurrent_requests_from_one_worker(
    platform: RunningPlatform, shop: str
) -> None:
    import concurrent.futures

    def slow_pid(_: int) -> int:
        with httpx.Client(headers=platform.headers, timeout=30) as http:
            return int(http.get(f"{shop}/pid", params={"wait": 0.5}).json()["pid"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pids = set(pool.map(slow_pid, range(4)))
    # Four requests at once, each awaiting inside the app: one worker (concurrency 16).
    assert len(pids) == 1
