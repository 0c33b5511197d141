"""Two gateways on one store: a control change made through one takes effect on the other
(store/changes.py), checked through the gateway that did not make it.

Both are real `cumulo up` processes on one data dir, following the change feed. Waits are
bounded polls: the 1 s propagation target is measured in bench/, not asserted here.
"""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FUNCTIONS, RunningPlatform, start_platform, wait_until

KIT = FUNCTIONS / "kit.py"
FOLLOW_S = 10.0  # generous: a loaded CI box must not fail a feed that works


def two_gateways(root: Path, *extra: str) -> Iterator[tuple[RunningPlatform, ...]]:
    data_dir = root / "data"
    started: list[RunningPlatform] = []
    try:
        for name in ("one", "two"):
            (root / name).mkdir()
            started.append(
                start_platform(
                    root / name, "--watch-changes", "--idle-timeout", "2", *extra, data_dir=data_dir
                )
            )
        yield tuple(started)
    finally:
        for running in started:
            running.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningPlatform, ...]]:
    yield from two_gateways(tmp_path_factory.mktemp("gateways"))


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


# A function's rate limit, offered far over the rate through both gateways. The platform
# should admit one bucket's worth: burst + rate x elapsed. The documented accuracy
# (docs/auth.md) allows (gateways - 1) x (burst + rate x lag) more, the lag being one sync
# interval (100 ms) plus the exchange itself; LAG_S is generous for a loaded CI box. Two
# gateways that did not share would admit twice one bucket: the bound below excludes it.
RATE, BURST = 10, 10
OFFER_S = 4.0
LAG_S = 1.0
MAX_REQUESTS = 1000
PACE_S = 0.01  # ~100 requests a second: 5x the rate on each gateway, and a long offer


def test_a_function_rate_limit_holds_across_both_gateways(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = gateways
    one.client().deploy(KIT, name=unique_name, handler="kit.echo", rate_limit=f"{RATE}/s")
    clients = [one.http(), two.http()]
    statuses: list[int] = []
    limited: list[httpx.Response] = []
    try:
        for http in clients:  # warm both (a cold start would eat into the offer)
            assert http.post(f"/fn/default/{unique_name}", json={}).status_code == 200
        time.sleep(BURST / RATE + 0.5)  # both buckets refill to a full burst
        started = time.monotonic()
        while time.monotonic() - started < OFFER_S and len(statuses) < MAX_REQUESTS:
            response = clients[len(statuses) % 2].post(f"/fn/default/{unique_name}", json={})
            statuses.append(response.status_code)
            if response.status_code == 429 and len(limited) < 5:
                limited.append(response)
            time.sleep(PACE_S)
        elapsed = time.monotonic() - started
    finally:
        for http in clients:
            http.close()
    admitted = statuses.count(200)
    one_bucket = BURST + RATE * elapsed
    assert set(statuses) <= {200, 429}
    assert admitted <= one_bucket + (2 - 1) * (BURST + RATE * LAG_S), (admitted, elapsed)
    assert admitted >= 0.7 * one_bucket, (admitted, elapsed)
    assert admitted < 2 * one_bucket - 5  # not each gateway its own limit
    assert statuses.count(429) > 0
    body = limited[0].json()["error"]
    assert body["code"] == "function_rate_limited"
    assert body["message"] == f"{unique_name} is over its rate limit of {RATE}/s"
    assert 1 <= int(limited[0].headers["retry-after"]) <= 60
    for gateway in gateways:
        assert "shared limits unavailable" not in gateway.log()


HOLD_S = 4.0  # how long the calls on gateway one hold the namespace's two slots


@pytest.fixture(scope="module")
def limited_gateways(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningPlatform, ...]]:
    yield from two_gateways(tmp_path_factory.mktemp("limited"), "--namespace-concurrency", "2")


def inflight_reported(gateway: RunningPlatform) -> int:
    """What the gateways have reported in flight, read from the store they share."""
    query = "SELECT coalesce(sum(inflight), 0) FROM limit_inflight"
    if gateway.database is not None:  # PostgreSQL: the same table in the shared database
        return int(gateway.store_query(query)[0][0])
    try:
        with sqlite3.connect(gateway.data_dir / "limits.db") as db:
            row = db.execute(query).fetchone()
    except sqlite3.Error:
        return 0  # not created yet
    return int(row[0])


def test_namespace_concurrency_holds_across_both_gateways(
    limited_gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    one, two = limited_gateways
    tenant = one.client(namespace=unique_name)
    tenant.deploy(KIT, name="slow", handler="kit.sleepy", max_instances=4)
    tenant.deploy(KIT, name="fast", handler="kit.echo")

    def call(gateway: RunningPlatform, name: str, body: dict[str, float]) -> httpx.Response:
        with gateway.http() as http:
            return http.post(f"/fn/{unique_name}/{name}", json=body)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(call, one, "slow", {"s": HOLD_S}) for _ in range(2)]
        follows("gateway one reporting 2 in flight", lambda: inflight_reported(one) == 2)
        refused = call(two, "fast", {})
        if refused.status_code == 200:  # two had not read them yet: one more interval
            follows("gateway two refusing", lambda: call(two, "fast", {}).status_code == 429)
            refused = call(two, "fast", {})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "namespace_concurrency"
        assert [f.result().status_code for f in slow] == [200, 200]
    follows("gateway two admitting again", lambda: call(two, "fast", {}).status_code == 200)


def test_consent_granted_and_withdrawn_on_one_gateway_gates_the_other(
    gateways: tuple[RunningPlatform, RunningPlatform], unique_name: str
) -> None:
    # Each gateway cached consent from its start: a withdrawal made on one was ignored by
    # the other until it restarted.
    one, two = gateways
    pii = Path(__file__).parent / "privacy" / "functions" / "pii.py"
    one.client().deploy(pii, name=unique_name, handler="pii.newsletter")
    subject = f"user:{unique_name}"

    def status_on_two() -> int:
        with two.http() as http:
            response = http.post(
                f"/fn/default/{unique_name}", json={}, headers={"x-cumulo-subject": subject}
            )
            return response.status_code

    assert status_on_two() == 403
    grant = {"subject": subject, "purpose": "marketing", "action": "grant", "source": "signup"}
    with one.http() as http:
        assert http.post("/v1/privacy/consent", json=grant).status_code == 201
    follows("the consent honoured on gateway two", lambda: status_on_two() == 200)
    with one.http() as http:
        withdraw = {**grant, "action": "withdraw"}
        assert http.post("/v1/privacy/consent", json=withdraw).status_code == 201
    follows("the withdrawal honoured on gateway two", lambda: status_on_two() == 403)
