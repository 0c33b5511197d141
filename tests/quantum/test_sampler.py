"""Sampler results: counts equal to direct Aer runs, schema, sweeps, bit order."""

from __future__ import annotations

import httpx
import pytest

from tests.quantum.circuits import BELL, RY_QASM3, direct_counts, ghz, quantum_volume
from tests.quantum.conftest import run_job


@pytest.mark.parametrize(
    ("name", "make", "method", "shots"),
    [
        ("bell", lambda: BELL, "statevector", 1000),
        ("ghz-24", lambda: ghz(24), "statevector", 1000),
        ("qv-20", lambda: quantum_volume(20), "statevector", 1000),
        ("ghz-24-stabilizer", lambda: ghz(24), "stabilizer", 1000),
    ],
)
def test_counts_identical_to_direct_aer(
    http: httpx.Client, name: str, make: object, method: str, shots: int
) -> None:
    assert callable(make)
    qasm = make()
    job = run_job(http, {"pubs": [{"circuit": qasm, "shots": shots}], "seed": 7, "method": method})
    assert job["state"] == "succeeded", job["error"]
    pub = job["result"]["pubs"][0]
    assert pub["data"]["c" if name != "qv-20" else "meas"]["counts"] == direct_counts(
        qasm, shots, 7, method
    )
    assert pub["metadata"]["seed"] == 7
    assert pub["metadata"]["method"] == method


def test_same_seed_same_counts_and_auto_method(http: httpx.Client) -> None:
    qasm = ghz(12, t_gate=True)
    body = {"pubs": [{"circuit": qasm, "shots": 2000}], "seed": 123}
    first, second = run_job(http, body), run_job(http, body)
    assert first["id"] != second["id"]
    assert first["method"] == "statevector"  # non-Clifford and it fits
    counts = first["result"]["pubs"][0]["data"]["c"]["counts"]
    assert counts == second["result"]["pubs"][0]["data"]["c"]["counts"]
    assert set(counts) == {"0" * 12, "1" * 12}
    other = run_job(http, {**body, "seed": 124})
    assert other["result"]["pubs"][0]["data"]["c"]["counts"] != counts


def test_result_schema_and_metadata(http: httpx.Client) -> None:
    job = run_job(http, {"pubs": [{"circuit": BELL, "shots": 100}], "seed": 5})
    result = job["result"]
    assert result["schema"] == "cumulo.quantum.result/v1"
    meta = result["metadata"]
    assert meta["seed"] == 5
    assert meta["method"] == "stabilizer"
    assert meta["device"] == "CPU"
    assert meta["qiskit_version"]
    assert meta["qiskit_aer_version"]
    assert meta["run_time_s"] > 0
    assert meta["peak_memory_bytes"] > 0
    assert meta["estimated_memory_bytes"] > 0
    pub = result["pubs"][0]
    assert pub["kind"] == "sampler"
    assert pub["shape"] == []
    assert pub["bit_order"] == "little"
    assert pub["data"]["c"]["num_bits"] == 2
    assert sum(pub["data"]["c"]["counts"].values()) == 100
    assert "bitstrings" not in pub["data"]["c"]
    assert [e["state"] for e in job["events"]] == ["queued", "running", "succeeded"]


def test_registers_bitstrings_and_bit_order(http: httpx.Client) -> None:
    # q0 is always 1, q1 always 0: register a gets "01" (bit 0 rightmost) in little order.
    qasm = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg a[2];\ncreg b[1];\n'
        "x q[0];\nh q[2];\nmeasure q[0] -> a[0];\nmeasure q[1] -> a[1];\nmeasure q[2] -> b[0];\n"
    )
    body = {"pubs": [{"circuit": qasm, "shots": 50}], "seed": 3, "bitstrings": True}
    little = run_job(http, body)["result"]["pubs"][0]
    assert little["data"]["a"]["counts"] == {"01": 50}
    assert little["data"]["a"]["bitstrings"] == ["01"] * 50
    assert sum(little["data"]["b"]["counts"].values()) == 50
    assert set(little["data"]["b"]["bitstrings"]) == {"0", "1"}
    big = run_job(http, {**body, "bit_order": "big"})["result"]["pubs"][0]
    assert big["bit_order"] == "big"
    assert big["data"]["a"]["counts"] == {"10": 50}
    assert big["data"]["b"]["bitstrings"] == little["data"]["b"]["bitstrings"]


def test_parameter_sweep_has_shape(http: httpx.Client) -> None:
    values = [[[0.0], [3.141592653589793]], [[0.0], [3.141592653589793]]]
    body = {"pubs": [{"circuit": RY_QASM3, "shots": 64, "parameter_values": values}], "seed": 1}
    pub = run_job(http, body)["result"]["pubs"][0]
    assert pub["shape"] == [2, 2]
    counts = pub["data"]["c"]["counts"]
    assert counts[0][0] == {"0": 64}
    assert counts[1][1] == {"1": 64}
    named = {
        **body,
        "pubs": [
            {
                "circuit": RY_QASM3,
                "shots": 8,
                "parameter_values": {"theta": [0.0, 3.141592653589793]},
            }
        ],
    }
    pub = run_job(http, named)["result"]["pubs"][0]
    assert pub["shape"] == [2]
    assert pub["data"]["c"]["counts"] == [{"0": 8}, {"1": 8}]


def test_several_pubs_in_one_job(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": BELL, "shots": 10}, {"circuit": ghz(3), "shots": 20}], "seed": 9}
    job = run_job(http, body)
    assert job["progress"] == {"pubs_done": 2, "pubs_total": 2}
    first, second = job["result"]["pubs"]
    assert first["metadata"]["seed"] == 9
    assert second["metadata"]["seed"] == 10
    assert sum(second["data"]["c"]["counts"].values()) == 20


def test_mps_runs_ghz_500(http: httpx.Client) -> None:
    # Non-Clifford and far too wide for a statevector: auto must choose matrix_product_state.
    job = run_job(http, {"pubs": [{"circuit": ghz(500, t_gate=True), "shots": 200}], "seed": 4})
    assert job["state"] == "succeeded", job["error"]
    assert job["method"] == "matrix_product_state"
    counts = job["result"]["pubs"][0]["data"]["c"]["counts"]
    assert set(counts) == {"0" * 500, "1" * 500}
    assert sum(counts.values()) == 200
    assert job["estimated_memory_bytes"] < 1_000_000


def test_custom_gate_definitions_run(http: httpx.Client) -> None:
    qasm = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\ngate bell a, b { h a; cx a, b; }\n'
        "qreg q[2];\ncreg c[2];\nbell q[0], q[1];\nmeasure q -> c;\n"
    )
    job = run_job(
        http, {"pubs": [{"circuit": qasm, "shots": 100}], "seed": 2, "method": "statevector"}
    )
    assert job["state"] == "succeeded", job["error"]
    assert set(job["result"]["pubs"][0]["data"]["c"]["counts"]) == {"00", "11"}
