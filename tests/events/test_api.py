"""The async HTTP API against a running uvicorn server: the events router in a small FastAPI
app whose InvokeFn runs a Python function in-process, behind a stand-in for the platform's
auth middleware (the real platform's own tests are in test_platform.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cumulo.errors import ApiError
from cumulo.events.api import build_router
from cumulo.events.service import EventsService
from cumulo.gateway.auth import PRINCIPAL
from cumulo.sdk.spec import FunctionConfig
from cumulo.security.auth import Principal
from cumulo.store.sqlite_jobs import SQLiteJobQueueRepository
from tests.conftest import free_port, wait_until

FUNCTIONS = {"default": {"work", "flaky", "strict", "raw"}, "team": {"work"}}


class Behaviour:
    """The in-process functions. `flaky` fails with 503 while `flaky_failures` lasts."""

    def __init__(self) -> None:
        self.flaky_failures = 0
        self.calls: list[tuple[str, str, str]] = []

    async def invoke(self, ns: str, fn: str, body: bytes, inv: str) -> tuple[int, bytes]:
        self.calls.append((ns, fn, inv))
        event = orjson.loads(body) if body else {}
        if fn == "flaky" and self.flaky_failures > 0:
            self.flaky_failures -= 1
            return 503, orjson.dumps({"error": {"code": "busy", "message": "try later"}})
        if fn == "raw":
            return 200, b"\x00\xff"
        if fn == "strict":
            return 400, orjson.dumps({"error": {"code": "bad_input", "message": "no"}})
        return 200, orjson.dumps({"got": event, "id": inv})


class FakeAuth:
    """`x-test-key: NAMESPACE/SCOPE,SCOPE` → that principal; no header → none (401)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-key":
                    ns, _, scopes = value.decode().partition("/")
                    scope[PRINCIPAL] = Principal("test", ns, frozenset(scopes.split(",")))
        await self.app(scope, receive, send)


def make_app(db: Path, behaviour: Behaviour) -> ASGIApp:
    async def config_of(ns: str, fn: str) -> FunctionConfig:
        return FunctionConfig(max_attempts=3)

    async def exists(ns: str, fn: str) -> bool:
        return fn in FUNCTIONS.get(ns, set())

    service = EventsService(
        SQLiteJobQueueRepository(db),
        behaviour.invoke,
        config_of=config_of,
        retry_base_s=0.01,
        poll_interval_s=0.02,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    app.include_router(build_router(service, exists, max_body_bytes=1024))
    return FakeAuth(app)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    app = make_app(tmp_path_factory.mktemp("events") / "cumulo.db", behaviour)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, "uvicorn to start")
    yield f"http://127.0.0.1:{port}", behaviour
    server.should_exit = True
    thread.join(30)


ADMIN = {"x-test-key": "*/admin"}


@pytest.fixture
def http(server: tuple[str, Behaviour]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers=ADMIN, timeout=10) as client:
        yield client


def wait_status(http: httpx.Client, job_id: str, wanted: set[str]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(http.get(f"/v1/invocations/{job_id}").json())
        return seen.get("status") in wanted

    wait_until(done, 10, f"invocation {job_id} to become {wanted}")
    return seen


def test_async_invocation_runs_and_reports_its_result(
    http: httpx.Client, server: tuple[str, Behaviour]
) -> None:
    response = http.post("/async/default/work", json={"a": 1})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/invocations/{job_id}"
    view = wait_status(http, job_id, {"succeeded"})
    assert view["result"] == {"got": {"a": 1}, "id": job_id}
    assert (view["attempts"], view["max_attempts"], view["error"]) == (1, 3, None)
    assert view["function"] == "work"
    assert ("default", "work", job_id) in server[1].calls


def test_retries_then_success(http: httpx.Client, server: tuple[str, Behaviour]) -> None:
    server[1].flaky_failures = 2
    job_id = http.post("/async/default/flaky", json={}).json()["id"]
    view = wait_status(http, job_id, {"succeeded"})
    assert view["attempts"] == 3


def test_exhausted_retries_go_to_the_dead_letters_and_replay(
    http: httpx.Client, server: tuple[str, Behaviour]
) -> None:
    server[1].flaky_failures = 3
    job_id = http.post("/async/default/flaky", json={"x": 1}).json()["id"]
    view = wait_status(http, job_id, {"dead"})
    assert view["attempts"] == 3
    assert view["error"] == {"code": "busy", "message": "try later"}
    letters = http.get("/v1/namespaces/default/dead-letters", params={"function": "flaky"})
    assert job_id in [d["id"] for d in letters.json()["dead_letters"]]
    replay = http.post(f"/v1/namespaces/default/dead-letters/{job_id}/replay")
    assert replay.status_code == 202
    assert replay.json()["status"] == "queued"
    view = wait_status(http, job_id, {"succeeded"})
    assert (view["attempts"], view["replays"]) == (1, 1)
    again = http.post(f"/v1/namespaces/default/dead-letters/{job_id}/replay")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_dead_letter"


def test_a_permanent_failure_is_not_retried(http: httpx.Client) -> None:
    job_id = http.post("/async/default/strict", json={}).json()["id"]
    view = wait_status(http, job_id, {"failed"})
    assert (view["attempts"], view["result_status"]) == (1, 400)
    assert view["error"]["code"] == "bad_input"


def test_idempotency_key(http: httpx.Client) -> None:
    headers = {"idempotency-key": f"order-{time.time_ns()}"}
    first = http.post("/async/default/work", json={"n": 1}, headers=headers)
    second = http.post("/async/default/work", json={"n": 1}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    other = http.post("/async/default/work", json={"n": 2}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    bad = http.post("/async/default/work", json={}, headers={"idempotency-key": "x" * 300})
    assert bad.status_code == 400


def test_concurrent_duplicates_make_one_job(
    http: httpx.Client, server: tuple[str, Behaviour]
) -> None:
    key = f"burst-{time.time_ns()}"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server[0], headers=ADMIN) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/async/default/work", json={"k": 1}, headers={"idempotency-key": key}
                    )
                    for _ in range(20)
                )
            )

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    job_id = responses[0].json()["id"]
    wait_status(http, job_id, {"succeeded"})
    assert [c for c in server[1].calls if c[2] == job_id] == [("default", "work", job_id)]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/async/default/nope", {"json": {}}, 404, "function_not_found"),
        ("POST", "/async/default/work", {"content": b"{nope"}, 400, "invalid_json"),
        ("POST", "/async/default/work", {"content": b"x" * 2000}, 413, "payload_too_large"),
        ("POST", "/async/Bad_NS/work", {"json": {}}, 400, "invalid_name"),
        ("GET", "/v1/invocations/0000", {}, 404, "invocation_not_found"),
        ("GET", "/v1/namespaces/default/dead-letters?limit=0", {}, 422, None),
        ("POST", "/v1/namespaces/default/dead-letters/0000/replay", {}, 404, None),
    ],
)
def test_bad_input_gets_a_clear_error(
    http: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    response = http.request(method, path, **kwargs)
    assert response.status_code == status
    if code is not None:
        assert response.json()["error"]["code"] == code


def test_other_content_types_pass_through(http: httpx.Client) -> None:
    response = http.post(
        "/async/default/work", content=b"plain", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 202


def as_key(key: str) -> dict[str, str]:
    return {"x-test-key": key}


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        (None, "POST", "/async/default/work", 401),
        ("default/read", "POST", "/async/default/work", 403),
        ("team/invoke", "POST", "/async/default/work", 404),
        ("default/invoke", "GET", "/v1/namespaces/default/dead-letters", 403),
        ("team/read", "GET", "/v1/namespaces/default/dead-letters", 404),
        ("default/read", "POST", "/v1/namespaces/default/dead-letters/x/replay", 403),
    ],
)
def test_scopes_and_namespaces(
    server: tuple[str, Behaviour], key: str | None, method: str, path: str, status: int
) -> None:
    headers = as_key(key) if key else {}
    response = httpx.request(method, server[0] + path, headers=headers, json={})
    assert response.status_code == status


def test_another_namespaces_invocation_is_not_found(
    http: httpx.Client, server: tuple[str, Behaviour]
) -> None:
    job_id = http.post("/async/default/work", json={}).json()["id"]
    url = f"{server[0]}/v1/invocations/{job_id}"
    theirs = httpx.get(url, headers=as_key("team/read"))
    missing = httpx.get(f"{server[0]}/v1/invocations/ffff", headers=as_key("team/read"))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    assert httpx.get(url, headers=as_key("default/read")).status_code == 200
    assert httpx.get(url, headers=as_key("default/invoke")).status_code == 403


def test_non_json_results_come_back_as_base64(http: httpx.Client) -> None:
    job_id = http.post("/async/default/raw", json={}).json()["id"]
    view = wait_status(http, job_id, {"succeeded"})
    assert view["result_base64"] == "AP8="
    assert "result" not in view
