"""ctx.quantum inside functions: QuantumClient over the gateway bridge, and the VQE example."""

from __future__ import annotations

import importlib.util
import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cumulo.errors import BadRequest
from cumulo.quantum.sdk import QuantumClient, QuantumJobError, handle_sdk_call
from tests.quantum.circuits import BELL, direct_counts
from tests.quantum.conftest import QuantumServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quantum_vqe.py"


def bridge(server: QuantumServer, namespace: str = "fn-ns") -> Callable[[str, dict[str, Any]], Any]:
    """The worker→gateway hop: JSON-able args in, JSON-able reply out, on the gateway's loop."""

    def submit(op: str, args: dict[str, Any]) -> Any:
        wire_args = orjson.loads(orjson.dumps(args))
        reply = server.call(handle_sdk_call(server.service, namespace, op, wire_args))
        return orjson.loads(orjson.dumps(reply))

    return submit


@pytest.fixture
def quantum(quantum_server: QuantumServer) -> QuantumClient:
    return QuantumClient(bridge(quantum_server))


def test_sample_qasm_text_matches_direct_aer(quantum: QuantumClient) -> None:
    result = quantum.sample(BELL, shots=500, seed=21, method="statevector")
    assert result.counts == direct_counts(BELL, 500, 21, "statevector")
    assert result.shots == 500
    assert result.bit_order == "little"
    assert math.isclose(sum(result.probabilities().values()), 1.0)
    assert result.metadata["seed"] == 21


def test_sample_quantum_circuit_keeps_parameter_order(quantum: QuantumClient) -> None:
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    theta = ParameterVector("θ", 11)
    circuit = QuantumCircuit(11)
    for i in range(11):
        circuit.rx(theta[i], i)
    circuit.measure_all()
    values = [math.pi if i in (2, 10) else 0.0 for i in range(11)]
    result = quantum.sample(circuit, shots=20, parameter_values=values, seed=1, bitstrings=True)
    assert result.counts == {"10000000100": 20}
    assert result.bitstrings == ["10000000100"] * 20
    by_name = {theta[2]: math.pi, **{theta[i]: 0.0 for i in range(11) if i != 2}}
    assert quantum.sample(circuit, shots=5, parameter_values=by_name, seed=1).counts == {
        "00000000100": 5
    }


def test_estimate_with_circuit_and_numpy_sweep(quantum: QuantumClient) -> None:
    import numpy as np
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    phi = Parameter("phi")
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.rz(phi, 1)
    sweep = np.linspace(0, np.pi, 5).reshape(5, 1)
    result = quantum.estimate(circuit, [["XX"], ["ZZ"]], parameter_values=sweep)
    assert result.shape == (2, 5)
    for k, value in enumerate(sweep[:, 0]):
        assert math.isclose(result.evs[0][k], math.cos(value), abs_tol=1e-9)
        assert math.isclose(result.evs[1][k], 1.0, abs_tol=1e-9)
    assert result.stds == [[0.0] * 5, [0.0] * 5]


def test_failed_job_raises(quantum: QuantumClient) -> None:
    from tests.quantum.circuits import slow_circuit

    with pytest.raises(QuantumJobError, match="time cap") as info:
        quantum.run([{"circuit": slow_circuit(), "shots": 1_000_000}], timeout_s=0.5)
    assert info.value.code == "time_limit"
    with pytest.raises(BadRequest, match="line 1"):
        quantum.sample("OPENQASM 2.0; qreg q[1] creg c[1];", shots=1)


def test_bridge_dry_run_and_unknown_op(quantum_server: QuantumServer) -> None:
    submit = bridge(quantum_server)
    report = submit("quantum.dry_run", {"body": {"pubs": [{"circuit": BELL}]}})
    assert report["method"] == "stabilizer"
    with pytest.raises(BadRequest, match="unknown quantum operation"):
        submit("quantum.teleport", {"body": {}})


def test_vqe_example_finds_h2_ground_state(quantum: QuantumClient) -> None:
    spec = importlib.util.spec_from_file_location("quantum_vqe_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ctx = types.SimpleNamespace(quantum=quantum)
    out = module.vqe({"steps": 150}, ctx)
    assert abs(out["error"]) < 1e-3, out["history"][-5:]
    assert out["history"][-1] < out["history"][0]
