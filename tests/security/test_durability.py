"""Durability and input at the admin edge: an acknowledged admin action keeps its audit row
through a kill -9, and text that is not valid Unicode is a 400 on every route with a body."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import RunningPlatform, start_platform

# A lone surrogate in a key and a value: whatever the route's model, the decoded body holds it.
SURROGATE_BODY = b'{"value": "\\ud800", "name": "\\udfff", "namespace": "default", "x\\ud800": 1}'
RAW_SURROGATE_BODY = b'{"value": "\xed\xa0\x80"}'


def _body_routes(platform: RunningPlatform) -> list[tuple[str, str]]:
    spec = httpx.get(f"{platform.url}/openapi.json").json()
    found = []
    for path, item in sorted(spec["paths"].items()):
        for method, operation in sorted(item.items()):
            if "requestBody" in operation:
                filled = re.sub(
                    r"\{(\w+)\}", lambda m: {"namespace": "default"}.get(m[1], "X"), path
                )
                found.append((method.upper(), filled))
    return found


def test_lone_surrogate_is_a_400_on_every_route_with_a_body(platform: RunningPlatform) -> None:
    routes = _body_routes(platform)
    assert len(routes) >= 8
    wrong = []
    with platform.http() as http:
        for method, path in routes:
            for body in (SURROGATE_BODY, RAW_SURROGATE_BODY):
                response = http.request(
                    method, path, content=body, headers={"content-type": "application/json"}
                )
                code = response.json().get("error", {}).get("code") if response.content else None
                if response.status_code != 400 or code not in ("invalid_input", "invalid_json"):
                    wrong.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
    assert wrong == [], "\n".join(wrong)


def test_lone_surrogate_secret_value_is_a_400_not_a_500(platform: RunningPlatform) -> None:
    with platform.http() as http:
        response = http.put(
            "/v1/namespaces/default/secrets/SURR",
            content=b'{"value": "\\ud800"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert "\n" not in response.json()["error"]["message"]


def _actions(namespace: str, trial: int) -> list[Callable[[httpx.Client], httpx.Response]]:
    return [
        lambda c: c.put(f"/v1/namespaces/{namespace}/secrets/K{trial}", json={"value": "v"}),
        lambda c: c.post("/v1/keys", json={"namespace": namespace, "scopes": ["read"]}),
        lambda c: c.delete(f"/v1/namespaces/{namespace}/secrets/K{trial}"),
    ]


def test_kill_9_right_after_a_200_keeps_the_audit_row(tmp_path: Path) -> None:
    """Each admin action kind, acknowledged, then SIGKILL at once: after a restart its
    audit row is there and every chain verifies."""
    running = start_platform(tmp_path)
    paths: list[str] = []
    try:
        for trial in range(2):
            for action in _actions("dur", trial):
                with running.http() as http:
                    response = action(http)
                assert response.status_code in (200, 201), response.text
                paths.append(f"{response.request.method} {response.request.url.path}")
                running.stop(signal.SIGKILL)
                running = start_platform(tmp_path)
        with running.http() as http:
            verified = http.get("/v1/audit/verify").json()
            events = http.get("/v1/audit", params={"namespace": "dur", "limit": 500}).json()
            keyed = http.get("/v1/audit", params={"namespace": "*", "limit": 500}).json()
    finally:
        running.stop(signal.SIGKILL)
    assert verified["ok"], verified
    recorded = {e["action"] for e in events["events"] + keyed["events"]}
    # Keys have no namespace in the path: their row is on the admin key's chain ("*").
    missing = [p for p in paths if p not in recorded]
    assert missing == []
