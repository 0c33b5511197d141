"""WebSockets to a `cumulo.app` (FastAPI) through the gateway, driven by the `websockets`
client library against a real platform: messages both ways, subprotocols, close codes in
both directions, refusals, limits (size, time, concurrency), crashes, metering, and the
URL / client address an app sees (HTTP and WebSocket)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import FUNCTIONS, RunningPlatform, wait_until
from tests.test_deps import REQUIREMENT, SANDBOX, _index_reachable

SOCKETS = FUNCTIONS / "sockets.py"
MAX_BODY = 1024 * 1024  # the session platform's --max-body-mb 1


def ws_url(platform: RunningPlatform, name: str, path: str, namespace: str = "default") -> str:
    return f"{platform.url.replace('http', 'ws', 1)}/fn/{namespace}/{name}{path}"


def open_ws(
    platform: RunningPlatform, name: str, path: str, namespace: str = "default", **kw: Any
) -> ClientConnection:
    kw.setdefault("additional_headers", platform.headers)
    kw.setdefault("open_timeout", 30)
    kw.setdefault("max_size", 4 * MAX_BODY)
    return connect(ws_url(platform, name, path, namespace), **kw)


def closed_code(platform: RunningPlatform, name: str, tag: str) -> int | None:
    with platform.http() as http:
        code = http.get(f"/fn/default/{name}/closed/{tag}").json()["code"]
    return int(code) if code is not None else None


def deps_testable() -> bool:
    """requirements.txt envs need the package index, and bubblewrap under a root gateway."""
    return _index_reachable() and (SANDBOX.sandboxed or not SANDBOX.drop_uid)


@pytest.fixture(scope="module")
def app(platform: RunningPlatform) -> str:
    platform.client().deploy(SOCKETS)
    return "sockets"


def close_of(ws: ClientConnection) -> tuple[int, str]:
    """The close frame the client received (waits for it)."""
    with pytest.raises(ConnectionClosed) as info:
        drain(ws)
    assert info.value.rcvd is not None, "the connection ended without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def drain(ws: ClientConnection) -> None:
    while True:
        ws.recv(timeout=30)


def test_text_and_bytes_echo_with_a_subprotocol(platform: RunningPlatform, app: str) -> None:
    with open_ws(platform, app, "/echo", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        assert ws.response is not None
        assert ws.response.headers["x-cumulo-invocation-id"]
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xff"
        for i in range(100):  # more than the flow-control window, in order
            ws.send(f"m{i}")
        assert [ws.recv(timeout=10) for _ in range(100)] == [f"m{i}" for i in range(100)]
    with open_ws(platform, app, "/echo") as ws:
        assert ws.subprotocol is None  # none offered, none chosen


def test_the_apps_close_code_reaches_the_client(platform: RunningPlatform, app: str) -> None:
    with open_ws(platform, app, "/echo") as ws:
        ws.send("close:4001")
        assert close_of(ws) == (4001, "asked to")


def test_the_clients_close_code_reaches_the_app(platform: RunningPlatform, app: str) -> None:
    with open_ws(platform, app, "/echo?tag=bye") as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.close(code=4002, reason="done here")
    wait_until(lambda: closed_code(platform, app, "bye") == 4002, what="the app to see 4002")


def test_a_refusal_before_accept_is_http_403(platform: RunningPlatform, app: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        open_ws(platform, app, "/reject")
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body)["error"]["code"] == "websocket_rejected"


def test_auth_is_an_invokes(platform: RunningPlatform, app: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        open_ws(platform, app, "/echo", additional_headers={})
    assert info.value.response.status_code == 401
    assert b"Traceback" not in info.value.response.body
    bad = {"authorization": "Bearer ck_not_a_real_key"}
    with pytest.raises(InvalidStatus) as info:
        open_ws(platform, app, "/echo", additional_headers=bad)
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        open_ws(platform, "no-such-function", "/echo")
    assert info.value.response.status_code == 404


def test_a_session_cookie_opens_a_websocket_only_from_its_own_origin(
    platform: RunningPlatform, app: str
) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere may make the browser send the
    dashboard's cookie on a handshake; only the gateway's own origin is let through."""
    login = httpx.post(
        f"{platform.url}/ui/login",
        json={"key": platform.api_key},
        headers={"x-cumulo-csrf": "1"},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    cookie = {"cookie": login.headers["set-cookie"].split(";")[0]}
    with pytest.raises(InvalidStatus) as info:
        open_ws(platform, app, "/echo", additional_headers=cookie, origin="https://evil.example")
    assert info.value.response.status_code == 403
    with open_ws(platform, app, "/echo", additional_headers=cookie, origin=platform.url) as ws:
        ws.send("same origin")
        assert ws.recv(timeout=10) == "same origin"


def test_oversized_messages_close_1009_both_ways(platform: RunningPlatform, app: str) -> None:
    with open_ws(platform, app, "/echo?tag=huge") as ws:
        ws.send(b"z" * (MAX_BODY + 1))
        code, _ = close_of(ws)
    assert code == 1009
    wait_until(lambda: closed_code(platform, app, "huge") == 1009, what="the app to see 1009")
    with open_ws(platform, app, "/echo") as ws:
        ws.send(f"big:{MAX_BODY + 1}")  # the app answers with a message over the limit
        code, _ = close_of(ws)
    assert code == 1009


def test_a_worker_crash_closes_1011(platform: RunningPlatform, app: str) -> None:
    with open_ws(platform, app, "/crash") as ws:
        ws.send("die")
        code, reason = close_of(ws)
    assert code == 1011
    assert "crashed" in reason
    with open_ws(platform, app, "/echo") as ws:  # the next connection gets a new worker
        ws.send("alive")
        assert ws.recv(timeout=10) == "alive"


def test_the_functions_timeout_bounds_the_connection(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(SOCKETS, name=unique_name, timeout_s=1.5)
    began = time.monotonic()
    with open_ws(platform, unique_name, "/hold?tag=late") as ws:
        assert ws.recv(timeout=10) == "held"
        code, reason = close_of(ws)
    lasted = time.monotonic() - began
    assert code == 1001
    assert "1.5s limit" in reason
    assert 1.4 <= lasted < 10
    # The app was told too (its receive raised WebSocketDisconnect with the same code).
    wait_until(lambda: closed_code(platform, unique_name, "late") == 1001, what="the app's 1001")
    records = platform.client().invocations(unique_name)
    assert any(r["status"] == 504 for r in records), records


def test_a_connection_holds_a_concurrency_slot(platform: RunningPlatform, unique_name: str) -> None:
    """With concurrency 1 and one instance, a second connection waits in the function's
    queue (as an HTTP invoke does) until the first one ends."""
    client = platform.client()
    client.deploy(SOCKETS, name=unique_name, concurrency=1, max_instances=1, timeout_s=20)

    def queued() -> int:
        return sum(z["queued"] for z in client.workers(unique_name))

    def second() -> str:
        with open_ws(platform, unique_name, "/echo") as ws:
            ws.send("my turn")
            return str(ws.recv(timeout=10))

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        open_ws(platform, unique_name, "/hold") as first,
    ):
        assert first.recv(timeout=10) == "held"
        waiting = pool.submit(second)
        wait_until(lambda: queued() == 1, what="the second connection to queue")
        assert not waiting.done()
        first.close()
        assert waiting.result(timeout=20) == "my turn"


def test_a_connection_is_one_metered_invocation_with_its_duration(
    platform: RunningPlatform, unique_name: str
) -> None:
    namespace = unique_name
    client = platform.client(namespace)
    client.deploy(SOCKETS, name="sockets")

    def usage() -> dict[str, Any]:
        answer = httpx.get(
            f"{platform.url}/v1/usage",
            params={"namespace": namespace},
            headers=platform.headers,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        total: dict[str, Any] = answer.json()["total"]
        return total

    before = usage()
    began = time.monotonic()
    with open_ws(platform, "sockets", "/echo", namespace=namespace) as ws:
        ws.send("x" * 100)
        assert ws.recv(timeout=10) == "x" * 100
        wait_until(lambda: time.monotonic() - began > 1.0, what="a second to pass")
    held = time.monotonic() - began

    def metered() -> bool:
        return int(usage()["invocations"]) - int(before["invocations"]) == 1

    wait_until(metered, what="the connection to be metered")
    after = usage()
    assert after["bytes_in"] - before["bytes_in"] == 100
    assert after["bytes_out"] - before["bytes_out"] == 100
    gb_s = after["gb_seconds"] - before["gb_seconds"]
    assert 0.9 * (256 / 1024) <= gb_s <= held * (256 / 1024) * 1.1


def settled(read: Callable[[], int]) -> Callable[[], bool]:
    """A wait_until predicate: true once `read()` gave the same nonzero value twice, a
    quarter second apart (a sender that flow control has stopped)."""
    last = [-1, 0.0]

    def check() -> bool:
        now = time.monotonic()
        if now - last[1] < 0.25:
            return False
        value, last[0], last[1] = read(), read(), now
        return bool(value) and value == last[0]

    return check


def test_a_slow_client_stops_the_app_instead_of_filling_memory(
    platform: RunningPlatform, app: str
) -> None:
    n, size = 2000, 64 * 1024  # 128 MB if nothing pushed back

    def sent() -> int:
        with platform.http() as http:
            return int(http.get(f"/fn/default/{app}/sent/flood").json()["n"])

    with open_ws(platform, app, f"/flood?n={n}&size={size}") as ws:
        wait_until(settled(sent), what="the app's sends to stop")
        stalled = sent()
        # The window and the sockets' buffers: a few MB, not the 128 MB the app has.
        assert stalled < n // 4, stalled
        assert all(len(ws.recv(timeout=10)) == size for _ in range(n))
    assert sent() == n


def test_an_app_that_never_reads_stops_its_client(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(SOCKETS, name=unique_name, timeout_s=4)
    count = [0]
    message = os.urandom(64 * 1024)  # incompressible (permessage-deflate)

    def flood(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            while True:
                ws.send(message)
                count[0] += 1

    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        open_ws(platform, unique_name, "/deaf", close_timeout=1) as ws,
    ):
        assert ws.recv(timeout=10) == "deaf"
        sending = pool.submit(flood, ws)
        wait_until(settled(lambda: count[0]), what="the client's sends to block")
        assert count[0] < 1000, count[0]  # 64 MB would be 1000: a window and buffers
        # The time limit ends it (the app, never reading, is stopped), and the client.
        sending.result(timeout=30)


@pytest.fixture
def who(platform: RunningPlatform, app: str) -> Iterator[dict[str, Any]]:
    with open_ws(platform, app, "/who") as ws:
        yield json.loads(ws.recv(timeout=10))


def test_url_for_and_the_client_address(
    platform: RunningPlatform, app: str, who: dict[str, Any]
) -> None:
    with platform.http() as http:
        seen = http.get(f"/fn/default/{app}/who", params={"q": "1"}).json()
    base = f"{platform.url}/fn/default/{app}"
    assert seen["url"] == f"{base}/who?q=1"
    assert seen["item_url"] == f"{base}/items/7"
    assert seen["base_url"] == f"{base}/"
    assert seen["client"][0] == "127.0.0.1"
    assert isinstance(seen["client"][1], int)
    # The same over a WebSocket (ws:// URLs), and the platform key never reaches the app.
    ws_base = ws_url(platform, app, "")
    assert who["url"] == f"{ws_base}/who"
    assert who["echo_url"] == f"{ws_base}/echo"
    assert who["client"][0] == "127.0.0.1"
    assert who["authorization"] is None


REQUIRING_APP = """
import humanize
from fastapi import FastAPI, WebSocket

import cumulo

api = cumulo.app(FastAPI())


@api.get("/n/{n}")
async def n(n: int) -> dict[str, str]:
    return {"text": humanize.intcomma(n)}


@api.websocket("/ws")
async def ws(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text(humanize.intcomma(int(await socket.receive_text())))
    await socket.close()
"""


@pytest.mark.skipif(not deps_testable(), reason="needs the package index and the sandbox")
def test_an_app_with_requirements_finds_the_platforms_fastapi(
    platform: RunningPlatform, unique_name: str, tmp_path: Path
) -> None:
    """Its requirements.txt lists only what the app adds; FastAPI comes from the platform."""
    code = tmp_path / "app"
    code.mkdir()
    (code / "main.py").write_text(REQUIRING_APP)
    (code / "requirements.txt").write_text(REQUIREMENT)
    deployed = platform.client().deploy(code, name=unique_name)
    assert deployed["config"]["requirements"]
    with platform.http() as http:
        assert http.get(f"/fn/default/{unique_name}/n/1234567").json() == {"text": "1,234,567"}
    with open_ws(platform, unique_name, "/ws") as ws:
        ws.send("7654321")
        assert ws.recv(timeout=10) == "7,654,321"
