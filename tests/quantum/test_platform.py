"""Quantum jobs through the real platform: auth, tenancy, and `ctx.quantum` in a function."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import RunningPlatform

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def test_bell_job_over_the_platform_api(platform: RunningPlatform) -> None:
    with platform.http() as http:
        submitted = http.post(
            "/v1/quantum/jobs",
            params={"wait": 30},
            json={"pubs": [{"circuit": BELL, "shots": 1000}], "seed": 7},
        )
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        assert job["state"] == "succeeded", job
        counts = job["result"]["pubs"][0]["data"]["c"]["counts"]
        assert set(counts) == {"00", "11"}
        assert sum(counts.values()) == 1000
        assert http.get(f"/v1/quantum/jobs/{job['id']}").json()["id"] == job["id"]
    anonymous = httpx.post(f"{platform.url}/v1/quantum/jobs", json={"pubs": []})
    assert anonymous.status_code == 401


def test_jobs_are_scoped_to_their_namespace(platform: RunningPlatform) -> None:
    other_key = platform.client("tenant-b").create_key(["invoke", "read"])["key"]
    with platform.http() as http:
        job = http.post(
            "/v1/quantum/jobs", json={"pubs": [{"circuit": BELL, "shots": 10}], "seed": 1}
        ).json()
    with httpx.Client(
        base_url=platform.url, headers={"authorization": f"Bearer {other_key}"}
    ) as http:
        assert http.get(f"/v1/quantum/jobs/{job['id']}").status_code == 404
        mine = http.get("/v1/quantum/jobs", params={"namespace": "default"})
        assert mine.status_code == 404


def test_vqe_example_function_uses_ctx_quantum(platform: RunningPlatform) -> None:
    client = platform.client()
    client.deploy(EXAMPLES / "quantum_vqe.py")
    result = client.invoke("vqe", {"steps": 60})
    assert abs(result["error"]) < 1e-3, result
    assert result["exact_energy"] == -1.857275030202382
