"""Qiskit's V2 primitives on a real platform (`cumulo up`), checked against Aer's own.

`cumulo.quantum.SamplerV2`/`EstimatorV2` must give what `qiskit_aer.primitives` give for the
same seeded circuits, in Qiskit's own result containers, so a user's Qiskit script needs only
its constructor changed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Gate, Parameter, ParameterVector
from qiskit.primitives import (
    BaseEstimatorV2,
    BasePrimitiveJob,
    BaseSamplerV2,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers import BitArray
from qiskit.providers import JobStatus
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.primitives import EstimatorV2 as AerEstimator
from qiskit_aer.primitives import SamplerV2 as AerSampler

from cumulo.client import Client
from cumulo.errors import BadRequest, Conflict, Unprocessable
from cumulo.quantum import CumuloJob, EstimatorV2, QuantumJobError, SamplerV2
from tests.conftest import RunningPlatform, wait_until
from tests.quantum.conftest import run_user_script


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def ry_pair() -> QuantumCircuit:
    theta, phi = Parameter("theta"), Parameter("phi")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.rx(phi, 1)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


@pytest.fixture
def sampler(client: Client) -> SamplerV2:
    return SamplerV2(client=client, seed=11)


@pytest.fixture
def estimator(client: Client) -> EstimatorV2:
    return EstimatorV2(client=client, seed=5)


def test_bell_matches_aer_sampler_shot_for_shot(sampler: SamplerV2) -> None:
    assert isinstance(sampler, BaseSamplerV2)
    job = sampler.run([bell()], shots=1000)
    assert isinstance(job, BasePrimitiveJob)
    assert job.job_id().startswith("qj_")
    result = job.result()
    expected = AerSampler(seed=11).run([bell()], shots=1000).result()

    assert isinstance(result, PrimitiveResult)
    assert isinstance(result[0], SamplerPubResult)
    meas = result[0].data.meas
    assert isinstance(meas, BitArray)
    assert meas.num_shots == 1000
    assert meas.num_bits == 2
    assert meas.get_counts() == expected[0].data.meas.get_counts()
    assert meas.get_bitstrings() == expected[0].data.meas.get_bitstrings()
    assert set(meas.get_counts()) == {"00", "11"}
    assert result[0].metadata["shots"] == 1000
    assert result.metadata["job_id"] == job.job_id()
    assert result.metadata["seed"] == 11
    assert job.done()
    assert job.in_final_state()
    assert not job.running()
    assert not job.cancelled()
    assert job.status() is JobStatus.DONE


def test_parameter_sweep_matches_aer_per_binding(sampler: SamplerV2) -> None:
    circuit = ry_pair()
    # Bound in circuit.parameters order (phi, theta), as Qiskit defines it.
    values = np.array([[[0.0, 0.0], [0.3, 1.1], [math.pi, 0.5]], [[1.0, 2.0], [2.5, 0.2], [0, 3]]])
    result = sampler.run([(circuit, values)], shots=400).result()
    expected = AerSampler(seed=11).run([(circuit, values)], shots=400).result()

    meas = result[0].data.meas
    assert meas.shape == (2, 3)
    assert result[0].data.shape == (2, 3)
    for index in np.ndindex(2, 3):
        assert meas[index].get_counts() == expected[0].data.meas[index].get_counts(), index
    assert meas[0, 0].get_counts() == {"00": 400}


def test_pub_shots_and_several_registers(sampler: SamplerV2) -> None:
    q = QuantumRegister(3, "q")
    alpha, beta = ClassicalRegister(1, "alpha"), ClassicalRegister(2, "beta")
    circuit = QuantumCircuit(q, alpha, beta)
    circuit.x(0)
    circuit.h(1)
    circuit.measure(0, alpha[0])
    circuit.measure([1, 2], [beta[0], beta[1]])
    result = sampler.run([(circuit, None, 300), bell()], shots=50).result()
    expected = AerSampler(seed=11).run([(circuit, None, 300)], shots=50).result()

    data = result[0].data
    assert data.alpha.get_counts() == {"1": 300}
    assert data.beta.get_counts() == expected[0].data.beta.get_counts()
    assert data.beta.num_shots == 300
    assert result[1].data.meas.num_shots == 50
    assert result[1].metadata["shots"] == 50


def test_user_script_runs_unchanged_with_the_platform_from_the_environment(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    out = run_user_script(
        platform,
        tmp_path,
        """
        from qiskit import QuantumCircuit
        from cumulo.quantum import SamplerV2

        circuit = QuantumCircuit(2)
        circuit.h(0)
        circuit.cx(0, 1)
        circuit.measure_all()
        sampler = SamplerV2(seed=3)
        job = sampler.run([circuit], shots=200)
        counts = job.result()[0].data.meas.get_counts()
        print(sorted(counts), sum(counts.values()), job.status().name)
        """,
    )
    assert out.strip() == "['00', '11'] 200 DONE"


def estimator_circuit() -> QuantumCircuit:
    theta = ParameterVector("t", 2)
    circuit = QuantumCircuit(2)
    circuit.ry(theta[0], 0)
    circuit.ry(theta[1], 1)
    circuit.cx(0, 1)
    circuit.rz(0.4, 1)
    return circuit


def test_estimator_exact_matches_aer(estimator: EstimatorV2) -> None:
    assert isinstance(estimator, BaseEstimatorV2)
    circuit = estimator_circuit()
    observables = [
        [SparsePauliOp(["ZZ"])],
        [SparsePauliOp(["XI", "IY", "ZX"], coeffs=[0.5, -1.0, 0.25])],
    ]
    values = [[0.1, 0.2], [1.0, -0.7], [2.2, 0.9]]
    pub = (circuit, observables, values)
    result = estimator.run([pub, (circuit, "ZI", [0.5, 0.5])]).result()
    expected = AerEstimator().run([pub, (circuit, "ZI", [0.5, 0.5])]).result()

    assert isinstance(result[0], PubResult)
    assert result[0].data.evs.shape == (2, 3)
    np.testing.assert_allclose(result[0].data.evs, expected[0].data.evs, atol=1e-9)
    np.testing.assert_array_equal(result[0].data.stds, np.zeros((2, 3)))
    assert result[1].data.evs.shape == ()
    assert math.isclose(float(result[1].data.evs), float(expected[1].data.evs), abs_tol=1e-9)
    assert result[0].metadata["target_precision"] == 0.0


def test_estimator_precision_gives_shot_noise_within_its_stds(estimator: EstimatorV2) -> None:
    circuit = estimator_circuit()
    values = [[0.3 * k, 0.1 * k] for k in range(1, 9)]  # no eigenstate: every std > 0
    exact = AerEstimator().run([(circuit, "ZZ", values)]).result()[0].data.evs
    result = estimator.run([(circuit, "ZZ", values)], precision=0.02).result()
    evs, stds = result[0].data.evs, result[0].data.stds
    assert result[0].metadata["target_precision"] == 0.02
    assert np.all(stds > 0)
    assert np.all(stds <= 0.021)
    assert np.all(np.abs(evs - exact) < 5 * stds + 1e-12)
    assert not np.allclose(evs, exact)  # real noise, not the exact values
    again = estimator.run([(circuit, "ZZ", values)], precision=0.02).result()[0].data.evs
    np.testing.assert_array_equal(evs, again)  # the same seed, the same noise


def test_projector_observable_is_expanded_into_paulis(estimator: EstimatorV2) -> None:
    from qiskit.quantum_info import SparseObservable

    circuit = QuantumCircuit(1)
    circuit.x(0)
    result = estimator.run([(circuit, SparseObservable.from_label("1"))]).result()
    assert math.isclose(float(result[0].data.evs), 1.0, abs_tol=1e-12)


def slow_circuit() -> tuple[QuantumCircuit, list[list[float]]]:
    """Seconds of statevector work per binding: long enough to cancel while it runs."""
    width = 18
    theta = Parameter("theta")
    circuit = QuantumCircuit(width)
    for _ in range(60):
        for q in range(width):
            circuit.rx(theta, q)
        for q in range(width - 1):
            circuit.cx(q, q + 1)
    circuit.measure_all()
    return circuit, [[0.01 * k] for k in range(200)]


def test_cancel_a_job_then_its_result_says_so(client: Client) -> None:
    sampler = SamplerV2(client=client, method="statevector")
    job = sampler.run([slow_circuit()], shots=10)
    assert isinstance(job, CumuloJob)
    assert job.status() in (JobStatus.QUEUED, JobStatus.RUNNING)
    assert not job.in_final_state()
    assert job.cancel() is True
    wait_until(job.in_final_state, 60, "the job to be cancelled")
    assert job.cancelled()
    assert not job.done()
    assert job.status() is JobStatus.CANCELLED
    with pytest.raises(QuantumJobError, match=rf"^quantum job {job.job_id()} cancelled$"):
        job.result()


def test_cancel_after_success_is_refused(sampler: SamplerV2) -> None:
    job = sampler.run([bell()], shots=10)
    job.result()
    assert job.cancel() is False
    assert job.done()


def test_gate_without_definition_is_refused_at_run(sampler: SamplerV2) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.append(Gate("mystery", 1, []), [0])
    circuit.measure(0, 0)
    with pytest.raises(BadRequest) as caught:
        sampler.run([bell(), circuit])
    assert str(caught.value) == (
        "pubs[1].circuit cannot be written as OpenQASM 3: failed to export gate 'mystery' "
        "that has no definition"
    )


def test_circuit_without_measurements_is_a_clear_error(sampler: SamplerV2) -> None:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    with pytest.raises(BadRequest) as caught:
        sampler.run([circuit])
    assert str(caught.value) == (
        "pubs[0].circuit measures nothing: a sampler PUB needs measurements"
    )


def test_too_wide_for_the_method_is_unprocessable(client: Client) -> None:
    circuit = QuantumCircuit(40)
    circuit.h(range(40))
    circuit.t(0)
    circuit.measure_all()
    with pytest.raises(Unprocessable, match=r"statevector simulation of 40 qubits needs \d+ bytes"):
        SamplerV2(client=client, method="statevector").run([circuit])


def test_observable_of_the_wrong_width_is_refused(estimator: EstimatorV2) -> None:
    with pytest.raises(ValueError, match="number of qubits"):
        estimator.run([(estimator_circuit(), "ZZZ", [0.1, 0.2])])


def test_client_quantum_jobs(client: Client) -> None:
    qasm = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
        "h q[0];\ncx q[0], q[1];\nc = measure q;\n"
    )
    body: dict[str, Any] = {"pubs": [{"circuit": qasm, "shots": 100}], "seed": 2}
    dry = client.quantum_dry_run(body)
    assert dry["method"] == "stabilizer"
    submitted = client.submit_quantum_job(body)
    assert submitted["state"] in ("queued", "running", "succeeded")
    finished = client.wait_quantum_job(submitted["id"], timeout=60)
    assert finished["state"] == "succeeded"
    counts = finished["result"]["pubs"][0]["data"]["c"]["counts"]
    assert sum(counts.values()) == 100
    assert client.quantum_job(submitted["id"])["id"] == submitted["id"]
    assert submitted["id"] in [j["id"] for j in client.quantum_jobs(state="succeeded")]
    with pytest.raises(Conflict, match=rf"quantum job {submitted['id']} already succeeded"):
        client.cancel_quantum_job(submitted["id"])
    again = client.run_quantum_job(body, timeout=60)
    assert again["result"]["pubs"][0]["data"]["c"]["counts"] == counts  # same seed
    assert "statevector" in client.quantum_backends()["methods"]


def test_client_waits_for_a_cancelled_job_and_times_out(client: Client) -> None:
    circuit, values = slow_circuit()
    from cumulo.quantum.sdk import circuit_payload

    text, wire_values = circuit_payload(circuit, values)
    body = {
        "pubs": [{"circuit": text, "shots": 10, "parameter_values": wire_values}],
        "method": "statevector",
    }
    job = client.submit_quantum_job(body)
    client.cancel_quantum_job(job["id"])
    started = time.monotonic()
    finished = client.wait_quantum_job(job["id"], timeout=60)
    assert finished["state"] == "cancelled"
    assert time.monotonic() - started < 60
    other = client.submit_quantum_job(body)
    try:
        with pytest.raises(TimeoutError, match=r"is still (queued|running) after 0\.5 s"):
            client.wait_quantum_job(other["id"], timeout=0.5)
    finally:
        client.cancel_quantum_job(other["id"])
