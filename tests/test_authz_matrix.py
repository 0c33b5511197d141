"""Every route in /openapi.json × every (tenant, scope) pair: deny by default, no leaks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    if path == "/v2/repository/index":
        return "read"  # a POST that only lists the namespace's models
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
    body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
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
        path = path.replace("{name}", "swagger-ui.css")
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


# ---------------------------------------------------------------- every route is classified
# Routes whose namespace comes from `?namespace=` (or the key's own), not the path: a key of
# one namespace naming another gets 404, never the other's data.
QUERY_NAMESPACED = {
    ("GET", "/v1/usage"),
    ("GET", "/v1/alerts"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/privacy/requests"),
    ("GET", "/v1/privacy/report"),
    ("GET", "/v1/privacy/consent"),
    ("GET", "/v1/quantum/jobs"),
    ("GET", "/v1/quantum/backends"),
    ("POST", "/v2/repository/index"),
}
# Routes outside /openapi.json: classified here too, so a new hidden route fails the check.
HIDDEN = {
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/docs/{name}"): "public",  # Swagger UI's own files (gateway/docs.py)
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "read",  # a namespace key: its own series only (docs/auth.md)
    ("GET", "/v1/debug/spans"): "platform",
}


def app_routes(tmp: Path) -> set[tuple[str, str]]:
    """Every (method, path) the admin app serves, read from its router in-process (the
    running platform is built by the same code), included routers and mounts too."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount

    from cumulo.gateway.app import build_admin_app
    from cumulo.gateway.platform import Platform, PlatformOptions
    from cumulo.observability.tracing import TracingSettings

    platform = Platform(
        PlatformOptions(data_dir=tmp / "data", tracing=TracingSettings(exporter="memory"))
    )
    found: set[tuple[str, str]] = set()

    def walk(routes: Any, prefix: str) -> None:
        for route in iter_route_contexts(routes):
            original = route.original_route
            if isinstance(original, Mount):
                walk(original.routes, prefix + original.path)
                continue
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((method, prefix + str(route.path)))

    walk(build_admin_app(platform).routes, "")
    return found


def test_every_route_is_classified(platform: RunningPlatform, tmp_path: Path) -> None:
    """A route nobody classified is a failure: add it to needed_scope (and, when it takes
    its namespace from the query, to QUERY_NAMESPACED) before it ships."""
    documented = set(routes(platform))
    served = app_routes(tmp_path)
    unclassified = sorted(served - documented - set(HIDDEN))
    assert unclassified == [], f"routes missing from the authz matrix: {unclassified}"
    for method, path in sorted(served & set(HIDDEN)):
        assert HIDDEN[(method, path)] in ("public", "any", "read", "platform")


def test_hidden_routes_deny_by_default(
    platform: RunningPlatform, keys: dict[tuple[str, str], str]
) -> None:
    leaks = []
    for (method, path), needed in HIDDEN.items():
        if path == "/v1/debug/spans":
            continue  # mounted only with the memory exporter
        path = path.replace("{name}", "swagger-ui.css")
        anonymous = call(platform, method, path, None).status_code
        if (needed == "public") != (anonymous == 200):
            leaks.append(f"{method} {path}: anonymous got {anonymous}")
        for (tenant, scope), key in keys.items():
            status = call(platform, method, path, key).status_code
            if needed == "read" and (status == 200) != (scope in ("read", "admin")):
                leaks.append(f"{method} {path} as {tenant}/{scope}: {status}")
    assert leaks == [], "\n".join(leaks)


def test_query_namespaced_routes_hide_other_namespaces(
    platform: RunningPlatform, keys: dict[tuple[str, str], str]
) -> None:
    """A key of ten-b naming ten-a in `?namespace=` gets 404 (or 403), and no listing a
    ten-b key reads holds ten-a's names."""
    leaks = []
    documented = set(routes(platform))
    for method, path in sorted(QUERY_NAMESPACED):
        assert (method, path) in documented, f"{method} {path} is gone: update the matrix"
        params = {"namespace": TENANT, "subject": "s", "wait": "0"}
        for scope in SCOPES:
            key = keys[(OTHER, scope)]
            response = httpx.request(
                method,
                platform.url + path,
                params=params,
                headers={"authorization": f"Bearer {key}"},
            )
            if response.status_code not in (403, 404):
                leaks.append(
                    f"{method} {path}?namespace={TENANT} as {OTHER}/{scope}: {response.status_code}"
                )
            own = httpx.request(
                method, platform.url + path, headers={"authorization": f"Bearer {key}"}
            )
            # The audit page holds the caller's own requests, whose paths the matrix filled
            # with "target": only the namespace's name counts there.
            names = [f'"{TENANT}"'] + ([] if path == "/v1/audit" else ['"target"'])
            if own.status_code == 200 and any(n in own.text for n in names):
                leaks.append(f"{method} {path} as {OTHER}/{scope} lists {TENANT}'s names")
    assert leaks == [], "\n".join(leaks)
