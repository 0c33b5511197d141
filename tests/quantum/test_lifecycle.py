"""Job lifecycle: queue positions, cancel, time caps, idempotency, tenancy, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.quantum.circuits import BELL, slow_circuit
from tests.quantum.conftest import QuantumServer, run_job, start_server, wait_until

SLOW = {"pubs": [{"circuit": slow_circuit(), "shots": 1_000_000}], "seed": 1}


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/quantum/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_state(client: httpx.Client, job_id: str, state: str, timeout: float = 30) -> None:
    wait_until(lambda: job_of(client, job_id)["state"] == state, timeout, f"{job_id} {state}")


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/quantum/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" in fh.read()
    except FileNotFoundError:
        return True


def test_cancel_long_running_job(http: httpx.Client, quantum_server: QuantumServer) -> None:
    pids_before = set(quantum_server.service.worker_pids())
    job = submit(http, SLOW)
    wait_state(http, job["id"], "running")
    response = http.delete(f"/v1/quantum/jobs/{job['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelling"
    done = http.get(f"/v1/quantum/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["state"] == "cancelled"
    assert [e["state"] for e in done["events"]] == ["queued", "running", "cancelling", "cancelled"]
    assert done["result"] is None
    killed = pids_before - set(quantum_server.service.worker_pids())
    assert len(killed) == 1
    wait_until(lambda: all(gone(pid) for pid in killed), 10, "the cancelled worker to exit")
    # The pool refills and serves the next job.
    wait_until(lambda: len(quantum_server.service.worker_pids()) == 2, 60, "a replacement worker")
    assert run_job(http, {"pubs": [{"circuit": BELL}], "seed": 1})["state"] == "succeeded"


def test_queue_positions_and_cancel_of_queued_job(http: httpx.Client) -> None:
    slow = [submit(http, SLOW), submit(http, SLOW)]
    for job in slow:
        wait_state(http, job["id"], "running")
    first = submit(http, {"pubs": [{"circuit": BELL}]})
    second = submit(http, {"pubs": [{"circuit": BELL}]})
    assert (first["queue_position"], second["queue_position"]) == (1, 2)
    response = http.delete(f"/v1/quantum/jobs/{first['id']}")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert job_of(http, second["id"])["queue_position"] == 1
    for job in slow:
        http.delete(f"/v1/quantum/jobs/{job['id']}")
    done = http.get(f"/v1/quantum/jobs/{second['id']}", params={"wait": 60}).json()
    assert done["state"] == "succeeded"
    assert job_of(http, first["id"])["state"] == "cancelled"


def test_time_cap_fails_the_job(http: httpx.Client) -> None:
    job = run_job(http, {**SLOW, "timeout_s": 1})
    assert job["state"] == "failed"
    assert job["error"]["code"] == "time_limit"
    assert "time cap of 1 s" in job["error"]["message"]


def test_terminal_states_never_change(http: httpx.Client) -> None:
    job = run_job(http, {"pubs": [{"circuit": BELL}], "seed": 2})
    assert job["state"] == "succeeded"
    response = http.delete(f"/v1/quantum/jobs/{job['id']}")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["error"]["message"]
    assert job_of(http, job["id"])["state"] == "succeeded"
    assert job_of(http, job["id"])["result"] == job["result"]


def test_idempotent_resubmission_returns_same_job(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": BELL, "shots": 321}], "seed": 8}
    first = submit(http, body, **{"Idempotency-Key": "order-42"})
    again = submit(http, body, **{"Idempotency-Key": "order-42"})
    assert again["id"] == first["id"]
    done = http.get(f"/v1/quantum/jobs/{first['id']}", params={"wait": 30}).json()
    assert submit(http, body, **{"Idempotency-Key": "order-42"})["result"] == done["result"]
    other = http.post(
        "/v1/quantum/jobs", json={**body, "seed": 9}, headers={"Idempotency-Key": "order-42"}
    )
    assert other.status_code == 409
    assert "different request" in other.json()["error"]["message"]
    assert submit(http, body)["id"] != first["id"]


def test_jobs_belong_to_their_namespace(quantum_server: QuantumServer) -> None:
    with quantum_server.http("alpha") as alpha, quantum_server.http("beta") as beta:
        job = submit(alpha, {"pubs": [{"circuit": BELL}]}, **{"Idempotency-Key": "k"})
        assert beta.get(f"/v1/quantum/jobs/{job['id']}").status_code == 404
        assert beta.delete(f"/v1/quantum/jobs/{job['id']}").status_code == 404
        # The same key in another namespace is another job.
        assert (
            submit(beta, {"pubs": [{"circuit": BELL}]}, **{"Idempotency-Key": "k"})["id"]
            != (job["id"])
        )
        listed = alpha.get("/v1/quantum/jobs").json()["data"]
        assert [j["id"] for j in listed] == [job["id"]]
        assert "result" not in listed[0]


def test_list_filters_by_state(http: httpx.Client) -> None:
    job = run_job(http, {"pubs": [{"circuit": BELL}]})
    listed = http.get("/v1/quantum/jobs", params={"state": "succeeded", "limit": 500}).json()
    assert job["id"] in {j["id"] for j in listed["data"]}
    assert {j["state"] for j in listed["data"]} == {"succeeded"}
    assert http.get("/v1/quantum/jobs", params={"state": "sleeping"}).status_code == 400


def test_restart_requeues_unfinished_jobs_and_leaves_no_workers(tmp_path: Path) -> None:
    running = start_server(tmp_path, pool_size=1)
    with running.quantum.http() as client:
        slow = submit(client, SLOW)
        wait_state(client, slow["id"], "running")
        bell = submit(client, {"pubs": [{"circuit": BELL, "shots": 100}], "seed": 5})
        assert bell["queue_position"] == 1
    pids = running.quantum.service.worker_pids()
    running.stop()
    assert all(gone(pid) for pid in pids)

    running = start_server(tmp_path, pool_size=1)
    try:
        with running.quantum.http() as client:
            wait_state(client, slow["id"], "running")
            restarted = job_of(client, slow["id"])
            assert "re-queued after a platform restart" in [
                e["message"] for e in restarted["events"]
            ]
            assert restarted["seed"] == 1
            assert client.delete(f"/v1/quantum/jobs/{slow['id']}").status_code == 202
            done = client.get(f"/v1/quantum/jobs/{bell['id']}", params={"wait": 60}).json()
            assert done["state"] == "succeeded"
            assert done["result"]["metadata"]["seed"] == 5
    finally:
        running.stop()


CHILD = """
import asyncio, sys
from pathlib import Path
from cumulo.quantum.service import QuantumService
from cumulo.store.sqlite_quantum import SQLiteQuantumJobRepository

async def main() -> None:
    jobs = SQLiteQuantumJobRepository(Path(sys.argv[1]) / 'quantum.db')
    service = QuantumService(jobs, pool_size=1)
    await service.start()
    job = await service.submit("default", {body!r})
    while (await service.get("default", job["id"]))["state"] != "running":
        await asyncio.sleep(0.02)
    print(job["id"], *service.worker_pids(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_gateway_sigkill_takes_workers_down_and_job_comes_back(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD.format(body=SLOW), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        try:
            assert child.stdout is not None
            job_id, *pids = child.stdout.readline().split()
            assert pids
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    wait_until(lambda: all(gone(int(pid)) for pid in pids), 10, "orphaned workers to die")

    running = start_server(tmp_path, pool_size=1)
    try:
        with running.quantum.http() as client:
            job = job_of(client, job_id)
            assert job["state"] in ("queued", "running")
            assert "re-queued after a platform restart" in [e["message"] for e in job["events"]]
            client.delete(f"/v1/quantum/jobs/{job_id}")
            done = client.get(f"/v1/quantum/jobs/{job_id}", params={"wait": 30}).json()
            assert done["state"] == "cancelled"
    finally:
        running.stop()


def test_post_with_wait_and_backends(http: httpx.Client) -> None:
    response = http.post(
        "/v1/quantum/jobs", json={"pubs": [{"circuit": BELL}]}, params={"wait": 30}
    )
    assert response.status_code == 202
    assert response.json()["state"] == "succeeded"
    backends = http.get("/v1/quantum/backends").json()
    assert "matrix_product_state" in backends["methods"]
    assert "CPU" in backends["devices"]
    assert backends["versions"]["qiskit_aer"]
    assert backends["schema"] == "cumulo.quantum.result/v1"
    # What a Qiskit Target is built from: 16·2²⁷ bytes is the 2 GiB cap of this server.
    assert backends["max_qubits"]["statevector"] == 27
    assert backends["max_qubits"]["density_matrix"] == 13
    assert backends["max_pubs"] == 64
    assert {"cx", "h", "rz", "sx"} <= set(backends["basis_gates"]["auto"])
    assert "t" not in backends["basis_gates"]["stabilizer"]


def test_idle_workers_that_die_are_replaced(
    http: httpx.Client, quantum_server: QuantumServer
) -> None:
    for pid in quantum_server.service.worker_pids():
        os.kill(pid, signal.SIGKILL)
    job = run_job(http, {"pubs": [{"circuit": BELL}], "seed": 3})
    assert job["state"] == "succeeded", job["error"]
    wait_until(lambda: len(quantum_server.service.worker_pids()) == 2, 60, "a refilled pool")
