"""Start-up, graceful shutdown and the promise of no orphan processes."""

from __future__ import annotations

import concurrent.futures
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

KIT = FUNCTIONS / "kit.py"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def platform_pids(running: RunningPlatform, names: list[str]) -> set[int]:
    client = running.client()
    pids = set()
    for name in names:
        for zygote in client.workers(name):
            pids.add(zygote["pid"])
            pids.update(w["pid"] for w in zygote["workers"])
    return pids


def test_first_start_writes_credentials_0600_and_logs_only_where_the_key_is(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform()
    creds = running.data_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert running.api_key.startswith("cmo_")
    # stdout is a file here, not a terminal: the key stays in the 0600 file only
    # (tests/security/test_gateway_log.py plays the terminal).
    assert running.api_key not in running.log()
    assert f"admin API key saved in {creds.resolve()} (mode 0600)" in running.log()


def test_sigterm_drains_in_flight_requests_then_stops_every_worker(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform("--grace", "10")
    client = running.client()
    client.deploy(KIT, name="slow", handler="kit.sleepy", max_instances=3)
    client.deploy(KIT, name="quick", handler="kit.echo")
    client.invoke("quick", {})

    def slow_call(_: int) -> int:
        with running.http() as http:
            return http.post("/fn/default/slow", json={"s": 1.5}).status_code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(slow_call, i) for i in range(3)]
        wait_until(
            lambda: sum(len(z["workers"]) for z in client.workers("slow")) == 3,
            10,
            "three busy workers",
        )
        pids = platform_pids(running, ["slow", "quick"])
        assert len(pids) == 6  # two zygotes, four workers
        running.proc.send_signal(signal.SIGTERM)
        statuses = [c.result() for c in calls]
    assert statuses == [200, 200, 200]
    assert running.proc.wait(20) == 0
    wait_until(lambda: not any(alive(p) for p in pids), 5, "every worker to exit")


def test_sigkill_of_the_gateway_leaves_no_orphans(
    fresh_platform: Callable[..., RunningPlatform],
) -> None:
    running = fresh_platform()
    client = running.client()
    client.deploy(KIT, name="echo", handler="kit.echo", max_instances=2)
    client.invoke("echo", {})
    pids = platform_pids(running, ["echo"])
    assert len(pids) == 2
    running.proc.kill()
    running.proc.wait(10)
    wait_until(lambda: not any(alive(p) for p in pids), 5, "zygote and worker to die")


def test_restart_keeps_functions_state_and_key(
    fresh_platform: Callable[..., RunningPlatform], tmp_path: Path
) -> None:
    running = fresh_platform()
    client = running.client()
    client.deploy(KIT, name="count", handler="kit.counter")
    assert client.invoke("count", {})["n"] == 1
    assert running.stop() == 0
    again = fresh_platform()
    assert again.api_key == running.api_key
    assert "shown once" not in again.log()
    assert again.client().invoke("count", {})["n"] == 2


def test_demo_deploys_the_examples(fresh_platform: Callable[..., RunningPlatform]) -> None:
    repo = Path(__file__).parent.parent
    running = fresh_platform("--demo", cwd=repo)
    names = {f["name"] for f in running.client().functions()}
    assert {"hello", "echo", "webhook"} <= names
    with httpx.Client(base_url=running.url, headers=running.headers) as http:
        response = http.post("/fn/default/hello", json={"name": "ada"})
    assert response.json() == {"hello": "ada", "n": 1}
