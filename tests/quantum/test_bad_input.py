"""Every refusal is immediate, has the right status and says what is wrong."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.quantum.circuits import BELL, BELL_STATE_QASM3, RY_QASM3, ghz
from tests.quantum.conftest import MEMORY_CAP, QuantumServer


def submit(http: httpx.Client, body: Any, **params: Any) -> httpx.Response:
    return http.post("/v1/quantum/jobs", json=body, params=params)


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


def test_malformed_qasm2_names_line_and_column(http: httpx.Client) -> None:
    qasm = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0]\ncx q[0],q[1];\n'
    message = error_of(submit(http, {"pubs": [{"circuit": qasm}]}), 400)
    assert "pubs[0].circuit" in message
    assert "line 5, column 1" in message


def test_malformed_qasm3_names_line_and_column(http: httpx.Client) -> None:
    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
        "c = measure q[0;\n"
    )
    message = error_of(submit(http, {"pubs": [{"circuit": qasm}]}), 400)
    assert "line 6, column 16" in message


@pytest.mark.parametrize(
    "qasm",
    [
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nfrob q[0];\n',
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\n  frob q[0];\n',
    ],
    ids=["qasm2", "qasm3"],
)
def test_unknown_gate_is_400_with_position(http: httpx.Client, qasm: str) -> None:
    response = submit(http, {"pubs": [{"circuit": qasm}]})
    message = error_of(response, 400)
    assert response.json()["error"]["code"] == "unknown_gate"
    assert "frob" in message
    assert "line 5, column" in message


def test_too_many_qubits_for_statevector_is_422_with_bytes(http: httpx.Client) -> None:
    qasm = ghz(30, t_gate=True)
    body = {"pubs": [{"circuit": qasm}], "method": "statevector"}
    message = error_of(submit(http, body), 422)
    assert f"needs {16 * 2**30} bytes" in message
    assert f"{MEMORY_CAP} bytes" in message
    assert "available" in message


def test_density_matrix_uses_4_to_the_n(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": ghz(16)}], "method": "density_matrix"}
    message = error_of(submit(http, body), 422)
    assert f"needs {16 * 4**16} bytes" in message


def test_dry_run_reports_method_and_memory(http: httpx.Client) -> None:
    response = submit(http, {"pubs": [{"circuit": ghz(20, t_gate=True)}]}, dry_run="true")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dry_run"] is True
    assert report["method"] == "statevector"
    assert report["estimated_memory_bytes"] == 16 * 2**20
    assert report["available_memory_bytes"] == MEMORY_CAP
    clifford = submit(http, {"pubs": [{"circuit": ghz(20)}]}, dry_run="true").json()
    assert clifford["method"] == "stabilizer"


def test_dry_run_of_impossible_job_is_422(http: httpx.Client) -> None:
    response = submit(
        http, {"pubs": [{"circuit": ghz(40, t_gate=True)}], "method": "statevector"}, dry_run=1
    )
    assert "needs" in error_of(response, 422)


@pytest.mark.parametrize("shots", [0, -5, 1_000_001])
def test_shots_out_of_range_is_400(http: httpx.Client, shots: int) -> None:
    message = error_of(submit(http, {"pubs": [{"circuit": BELL, "shots": shots}]}), 400)
    assert "pubs[0].shots must be between 1 and 1000000" in message


def test_observable_of_wrong_width_is_400(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": BELL_STATE_QASM3, "observables": ["ZZ", "XXX"]}]}
    message = error_of(submit(http, body), 400)
    assert "('XXX') acts on 3 qubits, but the circuit has 2" in message


def test_observable_that_is_not_pauli_is_400(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": BELL_STATE_QASM3, "observables": ["ZQ"]}]}
    assert "not a Pauli string" in error_of(submit(http, body), 400)


def test_stabilizer_on_non_clifford_is_422(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": ghz(3, t_gate=True)}], "method": "stabilizer"}
    assert "non-Clifford gate(s): t" in error_of(submit(http, body), 422)


def test_gpu_is_honoured_or_refused_clearly(
    http: httpx.Client, quantum_server: QuantumServer
) -> None:
    body = {"pubs": [{"circuit": BELL, "shots": 100}], "device": "GPU", "seed": 1}
    response = submit(http, body)
    if "GPU" in quantum_server.service.capabilities()["devices"]:
        assert response.status_code == 202
    else:
        message = error_of(response, 422)
        assert "GPU" in message
        assert "qiskit-aer-gpu" in message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "body must be a JSON object"),
        ({"pubs": []}, "pubs must be a non-empty list"),
        ({"pubs": [{"circuit": BELL}], "method": "quantum_magic"}, "method must be one of"),
        ({"pubs": [{"circuit": BELL}], "seed": "7"}, "seed must be an integer"),
        ({"pubs": [{"circuit": BELL, "shots": 10, "precision": 0.1}]}, "use shots, not"),
        ({"pubs": [{"circuit": BELL}], "colour": "red"}, "unknown field(s) colour"),
        ({"pubs": [{"circuit": BELL, "parameter_values": [0.5]}]}, "has no parameters"),
        (
            {"pubs": [{"circuit": BELL_STATE_QASM3}]},
            "measures nothing",
        ),
    ],
)
def test_bad_bodies_are_400(http: httpx.Client, body: Any, fragment: str) -> None:
    assert fragment in error_of(submit(http, body), 400)


def test_missing_parameter_values_is_400(http: httpx.Client) -> None:
    qasm = RY_QASM3
    assert "parameters theta" in error_of(submit(http, {"pubs": [{"circuit": qasm}]}), 400)


def test_invalid_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/quantum/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in error_of(response, 400)


def test_unknown_job_is_404(http: httpx.Client) -> None:
    assert "no quantum job" in error_of(http.get("/v1/quantum/jobs/qj_missing"), 404)
    error_of(http.delete("/v1/quantum/jobs/qj_missing"), 404)


def test_wait_out_of_range_is_400(http: httpx.Client) -> None:
    error_of(http.get("/v1/quantum/jobs/qj_missing", params={"wait": 3600}), 400)
