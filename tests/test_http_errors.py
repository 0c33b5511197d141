"""Bad input over HTTP: each gets its status and a one-line JSON error, never a trace."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform

KIT = FUNCTIONS / "kit.py"


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in response.text
    return dict(body["error"])


def test_malformed_json_is_400(platform: RunningPlatform, unique_name: str) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.echo")
    with platform.http() as http:
        response = http.post(f"/fn/default/{unique_name}", content=b'{"a": ')
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_json"
    assert error["message"].startswith("the request body is not valid JSON")


def test_unknown_function_is_404(platform: RunningPlatform) -> None:
    with platform.http() as http:
        response = http.post("/fn/default/does-not-exist", json={})
        admin = http.get("/v1/namespaces/default/functions/does-not-exist")
    assert response.status_code == 404
    assert error_of(response) == {
        "code": "function_not_found",
        "message": "function 'does-not-exist' not found",
    }
    assert admin.status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer cmo_wrong"},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer cmo_" + "A" * 49},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/fn/default/anything"),
        ("GET", "/v1/namespaces/default/functions"),
        ("GET", "/metrics"),
        ("POST", "/v1/keys"),
    ],
)
def test_missing_or_wrong_key_is_401(
    platform: RunningPlatform, headers: dict[str, str], method: str, path: str
) -> None:
    response = httpx.request(method, platform.url + path, headers=headers, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] in {"missing_key", "invalid_key", "bad_auth_scheme"}


def test_a_valid_looking_key_that_was_never_issued_is_401(platform: RunningPlatform) -> None:
    from cumulo.security.keys import generate_key

    response = httpx.get(
        f"{platform.url}/v1/namespaces/default/functions",
        headers={"authorization": f"Bearer {generate_key()}"},
    )
    assert response.status_code == 401
    assert error_of(response) == {"code": "invalid_key", "message": "invalid API key"}


def test_bad_admin_bodies_are_400_with_one_line(platform: RunningPlatform) -> None:
    with platform.http() as http:
        not_json = http.post(
            "/v1/namespaces/default/deploy",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
        missing = http.post("/v1/namespaces/default/deploy", json={})
        not_base64 = http.post("/v1/namespaces/default/deploy", json={"bundle": "%%%"})
        not_targz = http.post("/v1/namespaces/default/deploy", json={"bundle": "aGVsbG8="})
        bad_ns = http.get("/v1/namespaces/Bad_NS/functions")
    for response in (not_json, missing, not_base64, not_targz, bad_ns):
        assert response.status_code == 400, response.text
        assert "\n" not in error_of(response)["message"]
    assert "bundle" in error_of(missing)["message"]
    assert error_of(not_targz)["code"] == "bad_bundle"


def test_unknown_admin_route_is_json_404(platform: RunningPlatform) -> None:
    with platform.http() as http:
        response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_scoped_key_cannot_deploy_and_other_namespace_is_404(
    platform: RunningPlatform, unique_name: str
) -> None:
    admin = platform.client()
    admin.deploy(KIT, name=unique_name, handler="kit.echo")
    key = admin.create_key(["invoke"], name="invoke-only")["key"]
    other = platform.client("other")
    other_key = other.create_key(["invoke", "read"])["key"]
    with httpx.Client(base_url=platform.url, headers={"authorization": f"Bearer {key}"}) as http:
        assert http.post(f"/fn/default/{unique_name}", json={"a": 1}).json() == {"a": 1}
        denied = http.post("/v1/namespaces/default/deploy", json={"bundle": ""})
        assert denied.status_code == 403
        assert error_of(denied)["code"] == "missing_scope"
    with httpx.Client(
        base_url=platform.url, headers={"authorization": f"Bearer {other_key}"}
    ) as http:
        assert http.post(f"/fn/default/{unique_name}", json={}).status_code == 404
        assert http.get(f"/v1/namespaces/default/functions/{unique_name}").status_code == 404
        assert http.get("/v1/namespaces/default/functions/no-such").status_code == 404
    admin.revoke_key(next(k["id"] for k in admin.api_keys() if k["name"] == "invoke-only"))
    revoked = httpx.post(
        f"{platform.url}/fn/default/{unique_name}", headers={"authorization": f"Bearer {key}"}
    )
    assert revoked.status_code == 401
