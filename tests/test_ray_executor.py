"""`cumulo up --executor ray://HOST:PORT`: workers on the nodes of a real two-node Ray
cluster on loopback (tests/ray_cluster.py), reached through one cumulo agent per node.

Real `cumulo up` processes, real raylets, real zygotes on each node. The chaos test kills a
node's raylet with SIGKILL mid-load and counts every answer.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CUMULO, FUNCTIONS, RunningPlatform, start_platform, wait_until
from tests.ray_cluster import RayCluster, two_node_cluster, why_unavailable

KIT = FUNCTIONS / "kit.py"

pytestmark = [
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
    pytest.mark.ray,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with two_node_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def gateway(
    cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    running = start_platform(
        tmp_path_factory.mktemp("ray-gateway"), "--executor", f"ray://{cluster.address}"
    )
    try:
        yield running
    finally:
        running.stop()


def nodes_running(gateway: RunningPlatform, name: str) -> set[str]:
    with gateway.http() as http:
        body = http.get(f"/v1/namespaces/default/functions/{name}/workers").json()
    return {pool["node"] for pool in body["zygotes"]}


def test_concurrent_invocations_run_on_both_nodes(
    gateway: RunningPlatform, unique_name: str
) -> None:
    gateway.client().deploy(KIT, name=unique_name, handler="kit.sleepy", concurrency=1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool, gateway.http() as http:
        answers = list(
            pool.map(lambda _: http.post(f"/fn/default/{unique_name}", json={"s": 0.5}), range(4))
        )
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert len(nodes_running(gateway, unique_name)) == 2


def test_state_rpc_from_a_remote_worker_reaches_the_gateways_store(
    gateway: RunningPlatform, unique_name: str
) -> None:
    gateway.client().deploy(KIT, name=unique_name, handler="kit.counter")
    with gateway.http() as http:
        seen = [http.post(f"/fn/default/{unique_name}", json={}).json()["n"] for _ in range(3)]
    assert seen == [1, 2, 3]


def test_a_handler_error_on_a_node_keeps_its_status_and_code(
    gateway: RunningPlatform, unique_name: str
) -> None:
    gateway.client().deploy(KIT, name=unique_name, handler="kit.boom")
    with gateway.http() as http:
        answer = http.post(f"/fn/default/{unique_name}", json={"why": "remote"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "function_error"
    assert "boom: remote" in answer.json()["error"]["message"]


def test_a_bundle_that_fails_its_hash_on_a_node_is_refused_never_run(
    gateway: RunningPlatform, tmp_path: Path, unique_name: str
) -> None:
    source = tmp_path / "tampered.py"
    source.write_text(f"def main(event, ctx):\n    return {{'fresh': {unique_name!r}}}\n")
    gateway.client().deploy(source, name=unique_name, handler="tampered.main")
    # What reaches a node is the gateway's archive: one changed on its disk after the
    # deploy no longer matches its name (its SHA-256).
    (newest,) = sorted(
        (gateway.data_dir / "bundles").glob("*.tar.gz"), key=lambda p: p.stat().st_mtime
    )[-1:]
    newest.chmod(0o600)
    newest.write_bytes(newest.read_bytes() + b"tampered")
    with gateway.http() as http:
        answer = http.post(f"/fn/default/{unique_name}", json={})
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "bundle_corrupt"
    assert error["message"].startswith(f"bundle {newest.name.removesuffix('.tar.gz')} failed")
    assert "refused, not run" in error["message"]


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        (
            "ray://127.0.0.1:1",
            "error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused",
        ),
        ("kubernetes", "error: --executor must be local, ray or ray://HOST:PORT, not 'kubernetes'"),
    ],
)
def test_a_ray_cluster_that_cannot_be_reached_is_one_line_and_exit_1(
    tmp_path: Path, executor: str, message: str
) -> None:
    done = subprocess.run(
        [CUMULO, "up", "--port", "0", "--data-dir", str(tmp_path / "d"), "--executor", executor],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr + done.stdout


def test_a_killed_node_costs_its_in_flight_calls_node_lost_and_nothing_else(
    tmp_path: Path, unique_name: str
) -> None:
    """Steady load over both nodes, one node SIGKILLed: in-flight calls on it answer 502
    node_lost at once, every other answer is a 200, no accepted async job is lost, and a
    node that joins afterwards takes work without a restart."""
    with two_node_cluster() as cluster:
        gateway = start_platform(tmp_path, "--executor", f"ray://{cluster.address}")
        try:
            client = gateway.client()
            client.deploy(KIT, name=unique_name, handler="kit.sleepy", concurrency=1)
            answers: Counter[str] = Counter()
            lost_after: list[float] = []
            jobs: list[str] = []
            killed_at: list[float] = []

            def call(http: httpx.Client, i: int) -> None:
                began = time.monotonic()
                if i % 5 == 0:
                    accepted = http.post(f"/async/default/{unique_name}", json={"s": 0.2})
                    assert accepted.status_code == 202, accepted.text
                    jobs.append(accepted.json()["id"])
                    return
                answer = http.post(f"/fn/default/{unique_name}", json={"s": 0.3})
                code = "ok" if answer.status_code == 200 else answer.json()["error"]["code"]
                answers[f"{answer.status_code} {code}"] += 1
                if code == "node_lost" and killed_at:
                    lost_after.append(time.monotonic() - max(began, killed_at[0]))

            with concurrent.futures.ThreadPoolExecutor(4) as pool, gateway.http() as http:
                futures = [pool.submit(call, http, i) for i in range(24)]
                time.sleep(1.5)  # load on both nodes
                assert len(nodes_running(gateway, unique_name)) == 2
                killed_at.append(time.monotonic())
                cluster.kill_node(cluster.workers[0])
                futures += [pool.submit(call, http, i) for i in range(24, 60)]
                for future in futures:
                    future.result(timeout=120)
            assert set(answers) <= {"200 ok", "502 node_lost"}, answers
            assert answers["200 ok"] >= 30
            assert all(seconds < 2.0 for seconds in lost_after), lost_after
            with gateway.http() as http:

                def all_jobs_done() -> bool:
                    states = [http.get(f"/v1/invocations/{job}").json()["status"] for job in jobs]
                    return all(s == "succeeded" for s in states)

                wait_until(all_jobs_done, 60, "every accepted async job to succeed")
                # A node that joins later receives work without a restart.
                cluster.add_node()
                wait_until(lambda: _both_nodes_serve(http, unique_name, gateway), 60, "a new node")
        finally:
            gateway.stop()


def _both_nodes_serve(http: httpx.Client, name: str, gateway: RunningPlatform) -> bool:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(
            pool.map(lambda _: http.post(f"/fn/default/{name}", json={"s": 0.4}), range(3))
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return len(nodes_running(gateway, name)) == 2
