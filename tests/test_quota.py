"""Monthly quotas, with the platform's clock in the test's hand.

The platform runs in this process (uvicorn in a thread, on a free port) with a fake clock
as `PlatformOptions.clock`: metering's hours and quota months follow it, so a test moves to
the next month by setting it. Workers, zygotes and the database are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from cumulo.client import Client
from cumulo.gateway.app import create_app
from cumulo.gateway.platform import Platform, PlatformOptions
from cumulo.runtime.settings import RuntimeSettings
from tests.conftest import CUMULO, FUNCTIONS, free_port, wait_until

NOV_30_23H = dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC).timestamp()
DEC_1 = dt.datetime(2026, 12, 1, 0, 0, 5, tzinfo=dt.UTC).timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class InProcess:
    url: str
    api_key: str
    clock: FakeClock
    server: uvicorn.Server
    thread: threading.Thread

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.api_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()


def start(data_dir: Path, clock: FakeClock, api_key: str = "") -> InProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    platform = Platform(
        PlatformOptions(
            data_dir=data_dir,
            url=url,
            clock=clock,
            runtime=RuntimeSettings(data_dir=data_dir, spare_zygotes=0),
        )
    )
    config = uvicorn.Config(
        create_app(platform), host="127.0.0.1", port=port, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_until(lambda: platform.ready or not thread.is_alive(), 30, "the platform to start")
    assert thread.is_alive(), "the in-process platform did not start"
    return InProcess(url, platform.new_admin_key or api_key, clock, server, thread)


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[Callable[[], InProcess]]:
    clock = FakeClock(NOV_30_23H)
    running: list[InProcess] = []

    def make() -> InProcess:
        if running:
            running[-1].stop()
        key = running[0].api_key if running else ""
        running.append(start(tmp_path / "data", clock, key))
        return running[-1]

    yield make
    if running and running[-1].thread.is_alive():
        running[-1].stop()


def invoke(p: InProcess, ns: str = "default", key: str | None = None) -> httpx.Response:
    with p.http(key) as http:
        return http.post(f"/fn/{ns}/burn", json={})


def set_quota(p: InProcess, ns: str, key: str | None = None, **body: object) -> httpx.Response:
    with p.http(key) as http:
        return http.put(f"/v1/namespaces/{ns}/quota", json=body)


def deploy(p: InProcess, ns: str = "default") -> None:
    with Client(p.url, p.api_key, namespace=ns) as c:
        c.deploy(FUNCTIONS / "metered.py", handler="metered.burn", name="burn")


def test_invocation_quota_refuses_until_the_next_month(
    clocked: Callable[[], InProcess],
) -> None:
    p = clocked()
    deploy(p)
    assert set_quota(p, "default", invocations=3).status_code == 200
    for _ in range(3):
        assert invoke(p).status_code == 200
    refused = invoke(p)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["message"] == (
        "namespace 'default' used its monthly quota of 3 invocations; "
        "it resets at 2026-12-01T00:00:00Z"
    )
    assert int(refused.headers["retry-after"]) == 3600
    with p.http() as http:
        view = http.get("/v1/namespaces/default/quota").json()
    assert view["invocations"] == 3
    assert view["used"]["invocations"] == 3

    # A restart loads the month so far from the database: still refused.
    p = clocked()
    assert invoke(p).status_code == 429

    p.clock.now = DEC_1
    assert invoke(p).status_code == 200
    with p.http() as http:
        view = http.get("/v1/namespaces/default/quota").json()
    assert view["used"]["invocations"] == 1
    assert view["period"]["start"] == dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    # Both months' invocations are in the usage, each in its own hour.
    with p.http() as http:
        hours = http.get("/v1/usage", params={"by": "hour", "since": "2d"}).json()
    assert [(r["hour"], r["invocations"]) for r in hours["rows"]] == [
        (int(NOV_30_23H), 3),
        (int(DEC_1) - 5, 1),
    ]


def test_gb_second_quota_and_who_may_set_quotas(clocked: Callable[[], InProcess]) -> None:
    p = clocked()
    deploy(p, "team")
    assert set_quota(p, "team", gb_seconds=0.0001).status_code == 200
    assert invoke(p, "team").status_code == 200  # 256 MB x >= 1 ms > 0.0001 GB-s
    refused = invoke(p, "team")
    assert refused.status_code == 429
    assert "monthly quota of 0.0001 GB-seconds" in refused.json()["error"]["message"]
    assert invoke(p, "default").status_code == 404  # other namespaces are not limited

    with Client(p.url, p.api_key, namespace="team") as c:
        tenant_admin = c.create_key(["admin"])["key"]
        reader = c.create_key(["read"])["key"]
    assert set_quota(p, "team", tenant_admin, invocations=10**9).status_code == 403
    with p.http(tenant_admin) as http:
        assert http.get("/v1/namespaces/team/quota").status_code == 200
    with p.http(reader) as http:
        assert http.get("/v1/namespaces/team/quota").status_code == 403
    bad = set_quota(p, "team", invocations=-1)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_quota"
    # Regression: past a 64-bit integer the store raised, and the client got a 500.
    huge = set_quota(p, "team", invocations=2**63)
    assert huge.status_code == 400
    assert huge.json()["error"] == {
        "code": "invalid_quota",
        "message": f"invocations must be a whole number from 0 to {2**63 - 1} or null",
    }

    # Both limits null: the quota is gone.
    assert set_quota(p, "team", gb_seconds=None, invocations=None).status_code == 200
    assert invoke(p, "team").status_code == 200


def test_quota_cli(clocked: Callable[[], InProcess]) -> None:
    p = clocked()
    env = {**os.environ, "CUMULO_URL": p.url, "CUMULO_API_KEY": p.api_key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CUMULO, *args], capture_output=True, text=True, env=env, timeout=60)

    set_result = cli("quota", "set", "acme", "--invocations", "500", "--gb-seconds", "2.5")
    assert set_result.returncode == 0, set_result.stderr
    shown = cli("quota", "show", "acme")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == (
        "namespace acme: invocations 0 of 500, GB-seconds 0.000000 of 2.5 this month "
        "(resets 2026-12-01T00:00:00Z)"
    )
    missing = cli("quota", "set", "Bad_Name", "--invocations", "1")
    assert missing.returncode == 1
    assert "invalid namespace" in missing.stderr
