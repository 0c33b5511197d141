"""A namespace key must never see or act on another namespace through the edge routes:
/metrics, privacy retention, the retention purge, debug spans."""

from __future__ import annotations

import httpx

from tests.conftest import FUNCTIONS, RunningPlatform


def _key(platform: RunningPlatform, namespace: str, scope: str) -> str:
    made: str = platform.client(namespace).create_key([scope], name=f"tenancy-{scope}")["key"]
    return made


def test_metrics_of_a_namespace_key_hide_other_namespaces(platform: RunningPlatform) -> None:
    platform.client("tn-victim").deploy(FUNCTIONS / "kit.py", name="secretfn", handler="kit.echo")
    platform.client("tn-spy").deploy(FUNCTIONS / "kit.py", name="myfn", handler="kit.echo")
    with platform.http() as admin:
        assert admin.post("/fn/tn-victim/secretfn", json={}).status_code == 200
        assert admin.post("/fn/tn-spy/myfn", json={}).status_code == 200
        everything = admin.get("/metrics").text
    assert "secretfn" in everything  # the platform admin sees all
    assert "myfn" in everything
    spy = _key(platform, "tn-spy", "read")
    seen = httpx.get(f"{platform.url}/metrics", headers={"authorization": f"Bearer {spy}"})
    assert seen.status_code == 200
    assert "myfn" in seen.text
    assert "secretfn" not in seen.text
    assert "tn-victim" not in seen.text
    assert "_system" not in seen.text
    assert httpx.get(f"{platform.url}/metrics").status_code == 401


def test_retention_list_shows_only_the_callers_namespace(platform: RunningPlatform) -> None:
    with platform.http() as admin:
        for ns in ("tr-a", "tr-b"):
            put = admin.put("/v1/privacy/retention", json={"namespace": ns, "ttl": "30d"})
            assert put.status_code == 200, put.text
        assert {"tr-a", "tr-b"} <= set(admin.get("/v1/privacy/retention").json()["namespaces"])
    key = _key(platform, "tr-a", "admin")
    listed = httpx.get(
        f"{platform.url}/v1/privacy/retention", headers={"authorization": f"Bearer {key}"}
    )
    assert listed.status_code == 200
    assert set(listed.json()["namespaces"]) == {"tr-a"}


def test_namespace_admin_purge_stays_in_its_namespace(platform: RunningPlatform) -> None:
    with platform.http() as admin:
        for ns in ("tp-a", "tp-b"):
            put = admin.put("/v1/privacy/retention", json={"namespace": ns, "ttl": "1d"})
            assert put.status_code == 200, put.text
    key = _key(platform, "tp-a", "admin")
    purged = httpx.post(
        f"{platform.url}/v1/privacy/retention/purge", headers={"authorization": f"Bearer {key}"}
    )
    assert purged.status_code == 200, purged.text
    assert {item["namespace"] for item in purged.json()["purged"]} <= {"tp-a"}
