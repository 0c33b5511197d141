"""Every route in /openapi.json × every (tenant, scope) pair: deny by default, no leaks."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform

SCOPES = ("invoke", "deploy", "read", "admin")
TENANT, OTHER = "ten-a", "ten-b"


def needed_scope(method: str, path: str) -> str:
    """The scope each route needs: written out here, independently of the gateway."""
    if path.startswith("/v1/master-key") or (path.endswith("/quota") and method == "PUT"):
        return "platform"  # the platform admin key only: no tenant scope reaches it
    if path.endswith("/quota"):
        return "admin"  # a tenant's admin reads its quota; only the platform sets it
    if path.startswith("/v2/health"):
        return "public"  # KServe V2 liveness and readiness probes, like /healthz
    if path == "/v2":
        return "any"  # KServe server metadata: any valid key
    if path.startswith("/ai/v1/") or (path.startswith("/v2/") and path.endswith("/infer")):
        return "invoke"
    if path.startswith(("/v1/keys", "/v1/audit", "/v1/privacy")):
        return "admin"
    if path.startswith("/v1/quantum"):
        return "read" if method == "GET" else "invoke"
    if path.startswith(("/async/", "/events/")) or path.endswith("/replay"):
        return "invoke"
    if method == "GET":
        return "read"
    return "deploy"


@pytest.fixture(scope="module")
def keys(platform: RunningPlatform) -> dict[tuple[str, str], str]:
    made = {}
    for tenant in (TENANT, OTHER):
        client = platform.client(tenant)
        for scope in SCOPES:
            made[(tenant, scope)] = client.create_key([scope], name=f"matrix-{scope}")["key"]
    client = platform.client(TENANT)
    client.deploy(FUNCTIONS / "kit.py", name="target", handler="kit.echo")
    return made


def routes(platform: RunningPlatform) -> Iterator[tuple[str, str]]:
    spec = httpx.get(f"{platform.url}/openapi.json").json()
    for path, item in sorted(spec["paths"].items()):
        for method in sorted(item):
            yield method.upper(), path


def fill(path: str) -> str:
    values = {
        "namespace": TENANT,
        "name": "target",
        "secret": "SOME_SECRET",
        "key": "key_000000000000",
        "invocation_id": "0000",
        "job_id": "qjob_missing",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)


def call(platform: RunningPlatform, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(
        method, platform.url + fill(path), headers=headers, json=body, params=_params(path)
    )


def _params(path: str) -> dict[str, str]:
    # Never wait on long polls or follow streams: the matrix checks answers, not behaviour.
    return {"follow": "false", "wait": "0"} if "logs" in path or "jobs" in path else {}


def test_every_route_denies_by_default(
    platform: RunningPlatform, keys: dict[tuple[str, str], str]
) -> None:
    leaks = []
    checked = 0
    for method, path in routes(platform):
        needed = needed_scope(method, path)
        namespaced = "{namespace}" in path
        anonymous = call(platform, method, path, None).status_code
        if needed == "public":
            if anonymous != 200:
                leaks.append(f"{method} {path}: public but anonymous got {anonymous}")
            continue
        if anonymous != 401:
            leaks.append(f"{method} {path}: anonymous not 401")
        for (tenant, scope), key in keys.items():
            status = call(platform, method, path, key).status_code
            checked += 1
            allowed = needed == "any" or (needed != "platform" and scope in (needed, "admin"))
            if namespaced and tenant != TENANT:
                expected_ok = status == 404
            elif allowed:
                expected_ok = status not in (401, 403)
            else:
                expected_ok = status == 403
            if not expected_ok:
                leaks.append(f"{method} {path} as {tenant}/{scope}: {status}")
    assert checked > 100
    assert leaks == [], "\n".join(leaks)


def test_admin_actions_do_not_cross_tenants(
    platform: RunningPlatform, keys: dict[tuple[str, str], str]
) -> None:
    other_admin = keys[(OTHER, "admin")]
    with httpx.Client(
        base_url=platform.url, headers={"authorization": f"Bearer {other_admin}"}
    ) as http:
        assert http.post("/fn/ten-a/target", json={}).status_code == 404
        assert http.get("/v1/namespaces/ten-a/functions/target/logs").status_code == 404
        assert http.put("/v1/namespaces/ten-a/secrets/X", json={"value": "v"}).status_code == 404
        made = http.post("/v1/keys", json={"namespace": "ten-a", "scopes": ["admin"]})
        assert made.status_code == 404
        listed = http.get("/v1/keys").json()["keys"]
        assert {k["namespace"] for k in listed} == {OTHER}
