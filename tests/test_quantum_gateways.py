"""Quantum jobs on two gateways sharing one store: each job runs once, on the gateway that
holds its lease; the other answers for it, cancels it, and takes it over when the first
one dies (cumulo.quantum.service, module doc).

Before leases, every gateway ran the jobs it admitted in a queue of its own, a cancel sent
to the other gateway answered 409 as if the job had finished, and a restarting gateway
re-queued every active job, the other gateway's running ones included.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningPlatform, start_platform
from tests.quantum.circuits import BELL, slow_circuit
from tests.test_multi_gateway import two_gateways

SLOW = {"pubs": [{"circuit": slow_circuit(), "shots": 1_000_000}], "seed": 1}
LEASE = ("--quantum-lease", "2")
WAIT_S = 60.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningPlatform, ...]]:
    yield from two_gateways(tmp_path_factory.mktemp("quantum-gateways"), *LEASE)


def submit(gateway: RunningPlatform, body: dict[str, Any]) -> str:
    with gateway.http() as http:
        response = http.post("/v1/quantum/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def job_on(gateway: RunningPlatform, job_id: str, wait: float = 0) -> dict[str, Any]:
    with gateway.http() as http:
        response = http.get(f"/v1/quantum/jobs/{job_id}", params={"wait": wait}, timeout=wait + 30)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def until(gateway: RunningPlatform, job_id: str, check: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        job = job_on(gateway, job_id)
        if check(job):
            return job
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {job['events']}"
        time.sleep(0.1)


def states(job: dict[str, Any]) -> list[str]:
    return [event["state"] for event in job["events"]]


def test_a_job_admitted_on_one_gateway_runs_once_and_is_waited_on_from_the_other(
    pair: tuple[RunningPlatform, RunningPlatform],
) -> None:
    one, two = pair
    job_id = submit(one, {"pubs": [{"circuit": BELL, "shots": 200}], "seed": 3})
    done = job_on(two, job_id, wait=WAIT_S)  # a long-poll on the gateway that does not run it
    assert done["state"] == "succeeded", done["events"]
    assert states(done) == ["queued", "running", "succeeded"]
    assert sum(done["result"]["pubs"][0]["data"]["c"]["counts"].values()) == 200


def test_a_cancel_sent_to_the_other_gateway_cancels_the_running_job(
    pair: tuple[RunningPlatform, RunningPlatform],
) -> None:
    one, two = pair
    job_id = submit(one, SLOW)
    until(two, job_id, lambda j: j["state"] == "running", "the job to run on gateway one")
    with two.http() as http:
        assert http.delete(f"/v1/quantum/jobs/{job_id}").status_code == 202
    cancelled = until(two, job_id, lambda j: j["state"] == "cancelled", "the cancel")
    assert "running" in states(cancelled)
    assert job_on(one, job_id)["state"] == "cancelled"


def test_a_dead_gateways_running_job_is_taken_over_once_its_lease_runs_out(
    tmp_path: Path,
) -> None:
    one, two = next(gen := two_gateways(tmp_path, *LEASE))
    try:
        job_id = submit(one, SLOW)
        until(two, job_id, lambda j: j["state"] == "running", "the job to run on gateway one")
        one.stop(signal.SIGKILL)
        taken = until(
            two,
            job_id,
            lambda j: (
                "re-queued: the gateway that ran it stopped" in [e["message"] for e in j["events"]]
            ),
            "gateway two to take the job over",
        )
        assert taken["state"] in ("queued", "running")
        assert taken["seed"] == 1  # the same job, run again with its seed
        with two.http() as http:
            assert http.delete(f"/v1/quantum/jobs/{job_id}").status_code == 202
        assert until(two, job_id, lambda j: j["state"] == "cancelled", "the cancel")
    finally:
        gen.close()


def test_an_unknown_job_is_404_on_either_gateway(
    pair: tuple[RunningPlatform, RunningPlatform],
) -> None:
    for gateway in pair:
        with gateway.http() as http:
            response = http.delete("/v1/quantum/jobs/qj_00000000000000000000")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


def test_a_gateway_starting_on_the_store_leaves_the_others_running_job_alone(
    pair: tuple[RunningPlatform, RunningPlatform], tmp_path: Path
) -> None:
    one, _two = pair
    job_id = submit(one, SLOW)
    until(one, job_id, lambda j: j["state"] == "running", "the job to run on gateway one")
    (tmp_path / "three").mkdir()
    three = start_platform(tmp_path / "three", "--watch-changes", *LEASE, data_dir=one.data_dir)
    try:
        assert job_on(three, job_id)["state"] == "running"  # its quantum service starts
        time.sleep(3.0)  # past a lease (2 s): a live gateway's lease is renewed, not taken
        job = job_on(three, job_id)
        assert job["state"] == "running"
        assert states(job) == ["queued", "running"]
        with three.http() as http:
            assert http.delete(f"/v1/quantum/jobs/{job_id}").status_code == 202
        cancelled = until(one, job_id, lambda j: j["state"] == "cancelled", "the cancel")
        assert states(cancelled) == ["queued", "running", "cancelling", "cancelled"]
    finally:
        three.stop()
