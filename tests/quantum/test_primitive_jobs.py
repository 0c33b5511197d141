"""A Qiskit user's script runs unchanged on cumulo, job status and cancel included.

The same script runs once with Aer's primitives and once with cumulo's (only the import line
differs) and must print the same thing; the job handle follows the platform job through its
states, and cancelling a queued job removes it from the platform's queue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.providers import JobStatus

from cumulo.client import Client
from cumulo.quantum import CumuloJob, QuantumJobError, SamplerV2
from tests.conftest import RunningPlatform
from tests.quantum.conftest import BusyPool, run_user_script

SCRIPT = """
import json

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp
{import_line}

theta, phi = Parameter("theta"), Parameter("phi")
ansatz = QuantumCircuit(2)
ansatz.ry(theta, 0)
ansatz.rx(phi, 1)
ansatz.cx(0, 1)
measured = ansatz.measure_all(inplace=False)
values = np.array([[0.0, 0.0], [0.4, 1.2], [np.pi, 0.7]])  # (phi, theta) per row

sampler = SamplerV2(seed=5)
job = sampler.run([(measured, values)], shots=500)
result = job.result()
counts = [result[0].data.meas[i].get_counts() for i in range(len(values))]

estimator = EstimatorV2()
observables = [[SparsePauliOp("ZI")], [SparsePauliOp(["XX", "IZ"], coeffs=[0.5, -1.0])]]
ejob = estimator.run([(ansatz, observables, values)])
evs = ejob.result()[0].data.evs

print(json.dumps({{
    "counts": counts,
    "shape": list(result[0].data.meas.shape),
    "evs": evs.tolist(),
    "status": [job.status().name, ejob.status().name],
    "done": [job.done(), ejob.done()],
    "ids": [isinstance(job.job_id(), str), isinstance(ejob.job_id(), str)],
}}))
"""
AER = "from qiskit_aer.primitives import EstimatorV2, SamplerV2"
CUMULO = "from cumulo.quantum import EstimatorV2, SamplerV2"


def test_a_script_with_parameters_prints_what_it_prints_on_aer(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    aer = json.loads(run_user_script(platform, tmp_path, SCRIPT.format(import_line=AER)))
    cumulo = json.loads(run_user_script(platform, tmp_path, SCRIPT.format(import_line=CUMULO)))
    assert cumulo["counts"] == aer["counts"]  # seeded: shot for shot
    assert cumulo["shape"] == aer["shape"] == [3]
    np.testing.assert_allclose(cumulo["evs"], aer["evs"], atol=1e-9)
    assert cumulo["status"] == aer["status"] == ["DONE", "DONE"]
    assert cumulo["done"] == aer["done"] == [True, True]
    assert cumulo["ids"] == [True, True]


def ry() -> QuantumCircuit:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1)
    circuit.ry(theta, 0)
    circuit.measure_all()
    return circuit


def states(job: CumuloJob) -> list[str]:
    return [event["state"] for event in job.job()["events"]]


def test_status_follows_the_job_from_queued_to_done(client: Client, busy_pool: BusyPool) -> None:
    job = SamplerV2(client=client, seed=3).run([(ry(), [[0.0], [np.pi]])], shots=100)
    assert job.status() is JobStatus.QUEUED
    assert (job.done(), job.running(), job.cancelled(), job.in_final_state()) == (
        False,
        False,
        False,
        False,
    )
    assert job.job()["queue_position"] == 1
    with pytest.raises(TimeoutError, match=rf"^quantum job {job.job_id()} is still queued"):
        job.result(timeout=0.5)

    busy_pool.release()
    result = job.result(timeout=120)
    assert job.status() is JobStatus.DONE
    assert (job.done(), job.running(), job.cancelled(), job.in_final_state()) == (
        True,
        False,
        False,
        True,
    )
    assert states(job) == ["queued", "running", "succeeded"]
    assert result[0].data.meas[0].get_counts() == {"0": 100}
    assert result[0].data.meas[1].get_counts() == {"1": 100}


def test_cancel_of_a_queued_job_takes_it_off_the_platform(
    client: Client, busy_pool: BusyPool
) -> None:
    sampler = SamplerV2(client=client, seed=3)
    doomed = sampler.run([(ry(), [[0.5]])], shots=100)
    behind = sampler.run([(ry(), [[0.0]])], shots=100)
    assert doomed.status() is JobStatus.QUEUED
    assert behind.job()["queue_position"] == 2

    assert doomed.cancel() is True
    # A queued job is cancelled at once: no `cancelling`, nothing to kill.
    assert doomed.status() is JobStatus.CANCELLED
    assert (doomed.cancelled(), doomed.in_final_state(), doomed.done()) == (True, True, False)
    assert behind.job()["queue_position"] == 1
    assert doomed.job_id() in {j["id"] for j in client.quantum_jobs(state="cancelled", limit=500)}
    with pytest.raises(QuantumJobError, match=rf"^quantum job {doomed.job_id()} cancelled"):
        doomed.result()

    busy_pool.release()
    assert behind.result(timeout=120)[0].data.meas.get_counts() == {"0": 100}
    # The job behind it ran; the cancelled one never did.
    after = client.quantum_job(doomed.job_id())
    assert after["state"] == "cancelled"
    assert [e["state"] for e in after["events"]] == ["queued", "cancelled"]
    assert after["result"] is None
    assert doomed.cancel() is True  # cancelling a cancelled job is a no-op, not an error
