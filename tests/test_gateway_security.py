"""Gateway-side security: public functions, rate limits, quotas, headers, TLS, key tenancy."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cumulo.security.ratelimit import ConcurrencyQuota, Rate, RateLimiter
from tests.conftest import FUNCTIONS, RunningPlatform

KIT = FUNCTIONS / "kit.py"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    rate = Rate.parse("2/s:3")
    assert [limiter.take("k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", rate) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("k", rate) == 0.0
    assert limiter.take("other", rate) == 0.0


@pytest.mark.parametrize(
    ("text", "per_s", "burst"),
    [("100/s", 100, 100), ("60/m", 1, 1), ("10/s:50", 10, 50), ("3600/h:5", 1, 5)],
)
def test_rate_parse(text: str, per_s: float, burst: float) -> None:
    assert Rate.parse(text) == Rate(per_s, burst)


@pytest.mark.parametrize("text", ["fast", "10/d", "-1/s", "10/s:0", "10/s:x"])
def test_rate_parse_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        Rate.parse(text)


def test_concurrency_quota() -> None:
    quota = ConcurrencyQuota(2)
    assert quota.enter("a")
    assert quota.enter("a")
    assert not quota.enter("a")
    assert quota.enter("b")
    quota.leave("a")
    assert quota.enter("a")


def test_public_function_takes_anonymous_calls_private_does_not(
    platform: RunningPlatform, unique_name: str
) -> None:
    client = platform.client()
    public, private = unique_name + "-pub", unique_name + "-priv"
    client.deploy(KIT, name=public, handler="kit.echo", public=True)
    client.deploy(KIT, name=private, handler="kit.echo")
    ok = httpx.post(f"{platform.url}/fn/default/{public}", json={"a": 1})
    assert ok.status_code == 200
    assert ok.json() == {"a": 1}
    for name in (private, "never-deployed"):
        denied = httpx.post(f"{platform.url}/fn/default/{name}", json={})
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "missing_key"
    wrong_key = httpx.post(
        f"{platform.url}/fn/default/{public}", json={}, headers={"authorization": "Bearer nope"}
    )
    assert wrong_key.status_code == 401
    client.deploy(KIT, name=public, handler="kit.echo")
    assert httpx.post(f"{platform.url}/fn/default/{public}", json={}).status_code == 401


def test_function_rate_limit_gives_429_with_retry_after(
    platform: RunningPlatform, unique_name: str
) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.echo", rate_limit="1/m:3")
    with platform.http() as http:
        statuses = [http.post(f"/fn/default/{unique_name}", json={}) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    limited = statuses[-1]
    assert limited.json()["error"]["code"] == "function_rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_key_rate_limit(fresh_platform: Callable[..., RunningPlatform]) -> None:
    running = fresh_platform("--key-rate", "1/m:4")
    with running.http() as http:
        statuses = [http.get("/v1/namespaces/default/functions").status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_namespace_concurrency_quota(fresh_platform: Callable[..., RunningPlatform]) -> None:
    running = fresh_platform("--namespace-concurrency", "2")
    client = running.client()
    client.deploy(KIT, name="slow", handler="kit.sleepy", max_instances=4)

    def call(_: int) -> int:
        with running.http() as http:
            return http.post("/fn/default/slow", json={"s": 1}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(4)]
        statuses = sorted(f.result() for f in futures)
    assert statuses.count(200) == 2
    assert statuses.count(429) == 2


def test_security_headers(platform: RunningPlatform, unique_name: str) -> None:
    platform.client().deploy(KIT, name=unique_name, handler="kit.raw")
    with platform.http() as http:
        api = http.get("/v1/namespaces/default/functions")
        fn = http.post(f"/fn/default/{unique_name}", content=b"x")
        health = http.get("/healthz")
    for response in (api, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers
    assert fn.headers["x-content-type-options"] == "nosniff"
    assert fn.headers["x-custom"] == "yes"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_serves_https_with_hsts(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    running = fresh_platform("--tls-cert", str(cert), "--tls-key", str(key), verify=context)
    assert running.url.startswith("https://127.0.0.1:")
    with running.http() as http:
        response = http.get("/v1/namespaces/default/functions")
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/healthz")  # not trusted without the CA


def test_a_namespace_admin_manages_only_its_own_keys(platform: RunningPlatform) -> None:
    root = platform.client()
    tenant_admin = root.__class__(platform.url, root.create_key(["admin"])["key"])
    tenant_admin.namespace = "default"
    other = platform.client("tenant-x")
    other_key_id = other.create_key(["invoke"])["id"]
    ids = {k["id"] for k in tenant_admin.api_keys()}
    assert other_key_id not in ids
    assert all(k["namespace"] == "default" for k in tenant_admin.api_keys())
    with pytest.raises(Exception, match="not found"):
        tenant_admin.revoke_key(other_key_id)
    tenant_admin.namespace = "tenant-x"
    with pytest.raises(Exception, match="not found"):
        tenant_admin.create_key(["admin"])
    tenant_admin.close()
