"""Two gateways on one store: a control change made through one takes effect on the other
(store/changes.py), checked through the gateway that did not make it.

Both are real `cumulo up` processes on one data dir, following the change feed. Waits are
bounded polls: the 1 s propagation target is measured in bench/, not asserted here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform, start_platform, wait_until

KIT = FUNCTIONS / "kit.py"
FOLLOW_S = 10.0  # generous: a loaded CI box must not fail a feed that works


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningPlatform, ...]]:
    root = tmp_path_factory.mktemp("gateways")
    data_dir = root / "data"
    started: list[RunningPlatform] = []
    try:
        for name in ("one", "two"):
            (root / name).mkdir()
            started.append(
                start_platform(
                    root / name, "--watch-changes", "--idle-timeout", "2", data_dir=data_dir
                )
            )
        yield tuple(started)
    finally:
        for running in started:
            running.stop(signal.SIGKILL)


def version_on(gateway: RunningPlatform, name: str) -> str | None:
    with gateway.http() as http:
        response = http.post(f"/fn/default/{name}", json={})
    return response.headers.get("x-cumulo-version") if response.status_code == 200 else None


def follows(what: str, check: object) -> None:
    wait_until(check, FOLLOW_S, what)  # type: ignore[arg-type]


def test_deploy_traffic_rollback_and_removal_reach_the_other_gateway(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    assert "following the changes other gateways make" in two.log()
    maker = one.client()
    maker.deploy(KIT, name=unique_name, handler="kit.whoami")
    assert version_on(two, unique_name) == "1"  # never cached there: read from the store
    maker.deploy(KIT, name=unique_name, handler="kit.whoami", env={"DEPLOY": "2"})
    follows("the new version on gateway two", lambda: version_on(two, unique_name) == "2")
    maker.set_traffic(unique_name, {1: 100})
    follows("the traffic change on gateway two", lambda: version_on(two, unique_name) == "1")
    maker.rollback(unique_name)
    follows("the rollback on gateway two", lambda: version_on(two, unique_name) == "2")
    maker.remove(unique_name)
    follows("the removal on gateway two", lambda: version_on(two, unique_name) is None)
    with two.http() as http:
        response = http.post(f"/fn/default/{unique_name}", json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "function_not_found"


def test_a_key_revoked_on_one_gateway_is_refused_by_the_other(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    admin = one.client()
    admin.deploy(KIT, name=unique_name, handler="kit.whoami")
    created = admin.create_key(name=unique_name, scopes=["invoke"])
    key = created["key"]

    def status_on_two() -> int:
        response = httpx.post(
            f"{two.url}/fn/default/{unique_name}",
            json={},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        return response.status_code

    follows("the new key accepted on gateway two", lambda: status_on_two() == 200)
    admin.revoke_key(created["id"])
    follows("the revoked key refused on gateway two", lambda: status_on_two() == 401)


def test_a_quota_set_on_one_gateway_is_enforced_by_the_other(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    tenant = one.client(namespace=unique_name)
    tenant.deploy(KIT, name="metered", handler="kit.whoami")

    def status_on_two() -> int:
        with two.http() as http:
            return http.post(f"/fn/{unique_name}/metered", json={}).status_code

    assert status_on_two() == 200
    tenant.set_quota(invocations=0)
    follows("the quota enforced on gateway two", lambda: status_on_two() == 429)
    tenant.set_quota(invocations=None)
    follows("the quota lifted on gateway two", lambda: status_on_two() == 200)


def test_a_secret_changed_on_one_gateway_is_read_on_the_other(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    tenant = one.client(namespace=unique_name)
    tenant.set_secret("API_TOKEN", "first")
    tenant.deploy(KIT, name="reader", handler="kit.secret")

    def token_on_two() -> object:
        with two.http() as http:
            return http.post(f"/fn/{unique_name}/reader", json={}).json().get("token")

    assert token_on_two() == "first"
    tenant.set_secret("API_TOKEN", "second")
    follows("the new secret on gateway two", lambda: token_on_two() == "second")


def test_an_idempotency_key_holds_across_gateways(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    one.client().deploy(KIT, name=unique_name, handler="kit.echo")
    key = {"idempotency-key": f"order-{unique_name}"}
    with one.http() as first, two.http() as second:
        accepted = first.post(f"/async/default/{unique_name}", json={"n": 1}, headers=key)
        again = second.post(f"/async/default/{unique_name}", json={"n": 1}, headers=key)
        other = second.post(f"/async/default/{unique_name}", json={"n": 2}, headers=key)
    assert accepted.status_code == again.status_code == 202
    assert again.json()["id"] == accepted.json()["id"]  # one job, whichever gateway
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_both_gateways_appending_keep_one_verifiable_audit_chain(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    clients = [one.client(namespace=unique_name), two.client(namespace=unique_name)]

    def append(index: int) -> None:
        for n in range(10):
            clients[index].set_secret(f"S{index}_{n}", "x")

    threads = [threading.Thread(target=append, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:  # each gateway checks the chain both appended to
        report = client.verify_audit()
        assert report["ok"] is True, report
        (chain,) = [c for c in report["chains"] if c["namespace"] == unique_name]
        assert chain["rows"] >= 20
