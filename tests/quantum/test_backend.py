"""`cumulo.quantum.CumuloBackend`: Qiskit's BackendV2 on a real platform, against Aer's.

`transpile(circuit, backend)` lowers to the gates the platform's simulator runs natively,
`backend.run(...).result().get_counts()` is keyed and shaped like Aer's, and a Bell circuit's
counts follow the same distribution as `AerSimulator`'s.
"""

from __future__ import annotations

import math

import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister, transpile
from qiskit.circuit import Parameter
from qiskit.providers import BackendV2, JobStatus, JobV1
from qiskit.transpiler.exceptions import TranspilerError
from qiskit_aer import AerSimulator

from cumulo.client import Client
from cumulo.quantum import CumuloBackend, CumuloBackendJob, QuantumJobError
from tests.quantum.conftest import BusyPool

SHOTS = 4000


@pytest.fixture
def backend(client: Client) -> CumuloBackend:
    return CumuloBackend(client=client)


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def rxx_bell() -> QuantumCircuit:
    """(|00⟩ − i|11⟩)/√2 from a gate no target lists natively: transpile must rewrite it."""
    circuit = QuantumCircuit(2, name="rxx_bell")
    circuit.rxx(math.pi / 2, 0, 1)
    circuit.measure_all()
    return circuit


def test_target_comes_from_the_platform(backend: CumuloBackend) -> None:
    assert isinstance(backend, BackendV2)
    capabilities = backend.capabilities
    assert backend.name == "cumulo_auto"
    assert backend.backend_version == capabilities["versions"]["qiskit_aer"]
    assert backend.num_qubits == capabilities["max_qubits"]["auto"]
    assert set(backend.operation_names) == {
        *capabilities["basis_gates"]["auto"],
        "measure",
        "reset",
    }
    assert {"cx", "h", "rz", "sx", "u3"} <= set(backend.operation_names)
    assert backend.max_circuits == capabilities["max_pubs"]
    assert backend.coupling_map is None  # a simulator: all to all, nothing to route


def test_transpile_run_and_counts_follow_aer(backend: CumuloBackend) -> None:
    circuits = transpile([bell(), rxx_bell()], backend, seed_transpiler=1)
    assert "rxx" not in circuits[1].count_ops()
    assert set(circuits[1].count_ops()) - {"barrier"} <= set(backend.operation_names)
    job = backend.run(circuits, shots=SHOTS, seed_simulator=11)
    assert isinstance(job, JobV1)
    assert isinstance(job, CumuloBackendJob)
    assert job.job_id().startswith("qj_")
    result = job.result()
    assert job.status() is JobStatus.DONE
    assert job.done()
    assert result.success
    assert result.job_id == job.job_id()
    assert result.backend_name == "cumulo_auto"

    simulator = AerSimulator()
    aer = simulator.run(
        transpile([bell(), rxx_bell()], simulator), shots=SHOTS, seed_simulator=11
    ).result()
    sigma = math.sqrt(SHOTS * 0.25)  # binomial, p = 1/2
    for i in range(2):
        counts, expected = result.get_counts(i), aer.get_counts(i)
        assert set(counts) == set(expected) == {"00", "11"}
        assert sum(counts.values()) == SHOTS
        # Each within 5σ of N/2, and of Aer's own count within 5σ·√2 (two samples).
        assert abs(counts["00"] - SHOTS / 2) < 5 * sigma
        assert abs(counts["00"] - expected["00"]) < 5 * sigma * math.sqrt(2)
    assert result.get_counts(circuits[0]) == result.get_counts(0)
    # Seeded: the same run gives the same counts.
    again = backend.run(circuits, shots=SHOTS, seed_simulator=11).result()
    assert again.get_counts() == result.get_counts()


def test_several_registers_and_memory_are_laid_out_as_aer_does(backend: CumuloBackend) -> None:
    q = QuantumRegister(3, "q")
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    circuit = QuantumCircuit(q, alpha, beta, name="registers")
    circuit.x(0)
    circuit.x(2)
    circuit.measure(0, alpha[0])
    circuit.measure([1, 2], [beta[0], beta[1]])
    ours = backend.run(transpile(circuit, backend), shots=20, memory=True).result()
    simulator = AerSimulator()
    aer = simulator.run(transpile(circuit, simulator), shots=20, memory=True).result()
    assert ours.get_counts() == aer.get_counts() == {"10 1": 20}
    assert ours.get_memory() == aer.get_memory() == ["10 1"] * 20


def test_cancel_a_queued_backend_job(backend: CumuloBackend, busy_pool: BusyPool) -> None:
    job = backend.run(transpile(bell(), backend), shots=10)
    assert job.status() is JobStatus.QUEUED
    assert job.cancel() is True
    assert job.status() is JobStatus.CANCELLED
    assert job.cancelled()
    assert job.in_final_state()
    assert backend.client.quantum_job(job.job_id())["state"] == "cancelled"
    with pytest.raises(QuantumJobError, match=rf"^quantum job {job.job_id()} cancelled"):
        job.result()


def test_bad_runs_are_refused_before_submission(client: Client, backend: CumuloBackend) -> None:
    with pytest.raises(ValueError, match=r"^cumulo_auto has no run option\(s\) shotz "):
        backend.run(bell(), shotz=10)
    theta = Parameter("theta")
    unbound = QuantumCircuit(1)
    unbound.ry(theta, 0)
    unbound.measure_all()
    with pytest.raises(ValueError, match=r"^circuit 0 \(.*\) has unbound parameters"):
        backend.run(unbound)
    statevector = CumuloBackend(client=client, method="statevector")
    width = statevector.num_qubits
    assert width == statevector.capabilities["max_qubits"]["statevector"]
    assert (
        16 * 2**width <= statevector.capabilities["available_memory_bytes"] < 16 * 2 ** (width + 1)
    )
    too_wide = QuantumCircuit(width + 1)
    too_wide.h(range(width + 1))
    too_wide.measure_all()
    with pytest.raises(TranspilerError):
        transpile(too_wide, statevector)
    with pytest.raises(ValueError, match=r"^method must be one of .*, not 'fast'$"):
        CumuloBackend(client=client, method="fast")
