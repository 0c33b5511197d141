"""`CumuloBackend`: a Qiskit `BackendV2` whose `run` sends circuits to a cumulo platform.

For the older, backend-centred Qiskit style (what `AerSimulator` offers)::

    backend = CumuloBackend()                   # platform as for cumulo.client.Client
    job = backend.run(transpile(circuit, backend), shots=1000, seed_simulator=7)
    job.result().get_counts()                   # {"00": 507, "11": 493}, keyed like Aer's

The `target` comes from the platform (GET /v1/quantum/backends): the standard gates the
chosen simulation method runs natively, and the widest circuit it could admit, so
`transpile(circuit, backend)` gives circuits the platform runs as they are. Under the hood
one `run` is one `SamplerV2` job (a PUB per circuit); the counts and memory it returns are
laid out as Aer's `Result` lays them out (registers space-separated, the last one leftmost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qiskit import QuantumCircuit
from qiskit.circuit import Measure, Reset
from qiskit.circuit.library.standard_gates import get_standard_gate_name_mapping
from qiskit.primitives import PrimitiveResult, SamplerPubResult
from qiskit.providers import BackendV2, JobError, JobStatus, JobV1, Options
from qiskit.result import Result
from qiskit.result.models import ExperimentResult, ExperimentResultData
from qiskit.transpiler import Target

from cumulo.client import Client
from cumulo.quantum.primitives import CumuloJob, PlatformLink, SamplerV2
from cumulo.quantum.spec import METHODS

_OPTIONS = ("shots", "seed_simulator", "memory")


def build_target(capabilities: dict[str, Any], method: str) -> Target:
    """A Target of `method`'s native standard gates on its widest admissible circuit.

    No coupling map: a simulator connects every qubit to every other, so transpiling only
    rewrites gates and never routes or widens a circuit.
    """
    gates = get_standard_gate_name_mapping()
    target = Target(
        description=f"cumulo Aer simulator ({method})",
        num_qubits=int(capabilities["max_qubits"][method]),
    )
    for name in capabilities["basis_gates"][method]:
        target.add_instruction(gates[name], name=name)
    target.add_instruction(Measure())
    target.add_instruction(Reset())
    return target


class CumuloBackendJob(JobV1):  # type: ignore[misc]  # Qiskit is untyped
    """A `backend.run` job: status and cancel are the platform job's (a `CumuloJob`)."""

    _async = True

    def __init__(
        self,
        backend: CumuloBackend,
        job: CumuloJob,
        circuits: Sequence[QuantumCircuit],
        memory: bool,
    ) -> None:
        super().__init__(backend, job.job_id())
        self._job = job
        self._circuits = list(circuits)
        self._memory = memory

    @property
    def primitive_job(self) -> CumuloJob:
        """The same job seen as a Qiskit primitive job (`job()` gives the platform's document)."""
        return self._job

    def submit(self) -> None:
        raise JobError("backend.run already submitted this job to the platform")

    def status(self) -> JobStatus:
        return self._job.status()

    def cancel(self) -> bool:
        return bool(self._job.cancel())

    def wait_for_final_state(
        self, timeout: float | None = None, wait: float = 5, callback: Any = None
    ) -> None:
        """Long-polls the platform (`wait` and `callback` are accepted and unused)."""
        self.backend().client.wait_quantum_job(self.job_id(), timeout=timeout)

    def result(self, timeout: float | None = None) -> Result:
        """Wait and return Aer-shaped results; QuantumJobError if the job failed or was
        cancelled, TimeoutError after `timeout` seconds."""
        primitive = self._job.result(timeout=timeout)
        return _result(self, primitive, self._circuits, self._memory)


def _result(
    job: CumuloBackendJob,
    primitive: PrimitiveResult[Any],
    circuits: Sequence[QuantumCircuit],
    memory: bool,
) -> Result:
    experiments = [
        _experiment(circuit, pub, memory) for circuit, pub in zip(circuits, primitive, strict=True)
    ]
    backend = job.backend()
    return Result(
        backend_name=backend.name,
        backend_version=backend.backend_version,
        job_id=job.job_id(),
        success=True,
        results=experiments,
        metadata=dict(primitive.metadata),
    )


def _experiment(circuit: QuantumCircuit, pub: SamplerPubResult, memory: bool) -> ExperimentResult:
    names = [reg.name for reg in circuit.cregs]
    # join_data makes the first register's bits the least significant: Aer's clbit order,
    # where the circuit's first register is rightmost.
    joined = pub.join_data(names)
    data: dict[str, Any] = {"counts": {hex(k): v for k, v in joined.get_int_counts().items()}}
    if memory:
        data["memory"] = [hex(int(bits, 2)) for bits in joined.get_bitstrings()]
    header = {
        "name": circuit.name,
        "creg_sizes": [[reg.name, reg.size] for reg in circuit.cregs],
        "memory_slots": circuit.num_clbits,
        "metadata": circuit.metadata,
    }
    shots = int(pub.metadata["shots"])
    return ExperimentResult(
        shots=shots,
        success=True,
        data=ExperimentResultData(**data),
        header=header,
        status="DONE",
        metadata=pub.metadata.get("simulator_metadata", {}),
    )


class CumuloBackend(PlatformLink, BackendV2):  # type: ignore[misc]  # Qiskit is untyped
    """Qiskit's BackendV2 on a cumulo platform's Aer simulators.

    `method` is fixed per backend (its target depends on it): an Aer method or "auto" (the
    platform chooses per job). Platform selection as for `SamplerV2`: `url`/`api_key`/
    `namespace`, or a `client`. Run options: `shots` (1024), `seed_simulator` (None: the
    platform draws one; circuit i of a run simulates with seed + i), `memory` (False).
    """

    def __init__(
        self,
        *,
        method: str = "auto",
        device: str = "CPU",
        client: Client | None = None,
        url: str | None = None,
        api_key: str | None = None,
        namespace: str = "default",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        PlatformLink.__init__(self, client, url, api_key, namespace)
        try:
            capabilities = self._client.quantum_backends()
        except BaseException:
            self.close()  # a client made here must not outlive a backend that failed
            raise
        versions = capabilities.get("versions", {})
        BackendV2.__init__(
            self,
            name=f"cumulo_{method}" if device == "CPU" else f"cumulo_{method}_{device.lower()}",
            description=f"Aer {method} simulation on the cumulo platform at "
            f"{self._client.credentials.url}",
            backend_version=str(versions.get("qiskit_aer", "unknown")),
        )
        self._method = method
        self._device = device
        self._capabilities = capabilities
        self._target = build_target(capabilities, method)

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=1024, seed_simulator=None, memory=False)

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> int:
        return int(self._capabilities["max_pubs"])

    @property
    def capabilities(self) -> dict[str, Any]:
        """What the platform said it runs when this backend was made (its target's source)."""
        return dict(self._capabilities)

    def run(
        self, run_input: QuantumCircuit | Sequence[QuantumCircuit], **options: Any
    ) -> CumuloBackendJob:
        """Submit the circuits as one platform job and return at once."""
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"{self.name} has no run option(s) {', '.join(unknown)} "
                f"(options: {', '.join(_OPTIONS)})"
            )
        settings = {name: options.get(name, getattr(self.options, name)) for name in _OPTIONS}
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        for i, circuit in enumerate(circuits):
            if circuit.parameters:
                raise ValueError(
                    f"circuit {i} ({circuit.name}) has unbound parameters; bind them with "
                    "assign_parameters, or sweep them with cumulo.quantum.SamplerV2"
                )
        sampler = SamplerV2(
            client=self._client,
            seed=settings["seed_simulator"],
            method=self._method,
            device=self._device,
        )
        shots = int(settings["shots"])
        job = sampler.run([(circuit, None, shots) for circuit in circuits])
        return CumuloBackendJob(self, job, circuits, bool(settings["memory"]))
