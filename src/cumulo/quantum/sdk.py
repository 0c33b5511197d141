"""`ctx.quantum` inside a function, and the gateway side of its calls.

A function calls ``ctx.quantum.sample(circuit, shots=1000)`` or
``ctx.quantum.estimate(circuit, ["ZZ"], parameter_values=[...])``; the client turns that into
a job body and sends it through the worker's transport as the op ``quantum.run``. The gateway
answers it with `handle_sdk_call`, which runs the job through the same queue, admission and
pool as the HTTP API and replies when it is finished.

Nothing here imports Qiskit unless the caller passes a `qiskit.QuantumCircuit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cumulo.errors import ApiError, BadRequest

if TYPE_CHECKING:  # the service pulls in NumPy; a function's process never needs it
    from cumulo.quantum.service import QuantumService

Transport = Callable[[str, dict[str, Any]], Any]

OP_RUN = "quantum.run"
OP_DRY_RUN = "quantum.dry_run"


class QuantumJobError(ApiError):
    """A quantum job was admitted but did not succeed (failed or cancelled)."""

    status = 500
    default_code = "quantum_job_failed"


@dataclass(frozen=True, slots=True)
class SampleResult:
    """One sampler PUB's result (schema cumulo.quantum.result/v1)."""

    pub: dict[str, Any]
    metadata: dict[str, Any]
    job_id: str | None = None

    @property
    def data(self) -> dict[str, dict[str, Any]]:
        """Per classical register: {"num_bits", "counts", and "bitstrings" when asked for}."""
        data: dict[str, dict[str, Any]] = self.pub["data"]
        return data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pub["shape"])

    @property
    def shots(self) -> int:
        return int(self.pub["shots"])

    @property
    def bit_order(self) -> str:
        return str(self.pub["bit_order"])

    def _only(self) -> str:
        if len(self.data) != 1:
            raise ValueError(
                f"the circuit has registers {', '.join(self.data)}; use .register(name)"
            )
        return next(iter(self.data))

    @property
    def counts(self) -> Any:
        """Counts of the circuit's only classical register (nested by `shape` for sweeps)."""
        return self.data[self._only()]["counts"]

    @property
    def bitstrings(self) -> Any:
        entry = self.data[self._only()]
        if "bitstrings" not in entry:
            raise ValueError("bitstrings were not requested; pass bitstrings=True")
        return entry["bitstrings"]

    def register(self, name: str) -> Any:
        """Counts of one classical register by name."""
        return self.data[name]["counts"]

    def probabilities(self) -> dict[str, float]:
        """Outcome frequencies of the only register (no sweep)."""
        counts = self.counts
        if not isinstance(counts, dict):
            raise ValueError("probabilities() needs a result without a parameter sweep")
        return {key: n / self.shots for key, n in counts.items()}


@dataclass(frozen=True, slots=True)
class EstimateResult:
    """One estimator PUB's result: expectation values and their standard errors."""

    pub: dict[str, Any]
    metadata: dict[str, Any]
    job_id: str | None = None

    @property
    def evs(self) -> Any:
        """A float for shape (), else nested lists of `shape`."""
        return self.pub["evs"]

    @property
    def stds(self) -> Any:
        return self.pub["stds"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pub["shape"])


def _parameter_key(parameter: Any) -> str:
    return f"p{parameter:05d}" if isinstance(parameter, int) else str(parameter)


def circuit_payload(circuit: Any, parameter_values: Any) -> tuple[str, Any]:
    """QASM text and parameter values for the API, from QASM text or a `QuantumCircuit`.

    A circuit's parameters are renamed p00000, p00001, … in `circuit.parameters` order before
    export, because OpenQASM mangles names such as θ[10] and the service orders parameters by
    name: this keeps a list of values in the order the caller's circuit defines.
    """
    if isinstance(circuit, str):
        if isinstance(parameter_values, Mapping):
            parameter_values = {str(k): v for k, v in parameter_values.items()}
        return circuit, parameter_values
    if not hasattr(circuit, "num_qubits") or not hasattr(circuit, "parameters"):
        raise BadRequest(
            f"a circuit must be OpenQASM text or a qiskit.QuantumCircuit, not "
            f"{type(circuit).__name__}",
            code="invalid_circuit",
        )
    from qiskit import qasm3
    from qiskit.circuit import Parameter

    params = list(circuit.parameters)
    if not params:
        return str(qasm3.dumps(circuit)), parameter_values
    renamed = {p: Parameter(_parameter_key(i)) for i, p in enumerate(params)}
    text = str(qasm3.dumps(circuit.assign_parameters(renamed)))
    if isinstance(parameter_values, Mapping):
        by_name = {str(p.name): renamed[p].name for p in params}
        converted: dict[str, Any] = {}
        for key, value in parameter_values.items():
            name = by_name.get(str(getattr(key, "name", key)))
            if name is None:
                raise BadRequest(f"the circuit has no parameter {key}", code="invalid_request")
            converted[name] = value
        parameter_values = converted
    return text, parameter_values


def _plain(values: Any) -> Any:
    """numpy arrays and scalars → JSON lists and floats."""
    if values is None:
        return None
    if hasattr(values, "tolist"):
        return values.tolist()
    if isinstance(values, Mapping):
        return {k: _plain(v) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [_plain(v) for v in values]
    return values


class QuantumClient:
    """What a function sees as `ctx.quantum`."""

    def __init__(self, submit: Transport) -> None:
        self._submit = submit

    def run(
        self,
        pubs: Sequence[Mapping[str, Any]],
        *,
        seed: int | None = None,
        method: str = "auto",
        device: str = "CPU",
        bitstrings: bool = False,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Run a whole job (several PUBs) and return its full result document."""
        body: dict[str, Any] = {"pubs": [dict(p) for p in pubs], "method": method}
        if device != "CPU":
            body["device"] = device
        if seed is not None:
            body["seed"] = seed
        if bitstrings:
            body["bitstrings"] = True
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        args: dict[str, Any] = {"body": body}
        if idempotency_key is not None:
            args["idempotency_key"] = idempotency_key
        reply = self._submit(OP_RUN, args)
        if not isinstance(reply, Mapping) or not isinstance(reply.get("result"), Mapping):
            raise QuantumJobError("the platform sent no quantum result", code="bad_reply")
        return dict(reply)

    def sample(
        self,
        circuit: Any,
        shots: int = 1024,
        parameter_values: Any = None,
        seed: int | None = None,
        method: str = "auto",
        *,
        bitstrings: bool = False,
        device: str = "CPU",
    ) -> SampleResult:
        text, values = circuit_payload(circuit, _plain(parameter_values))
        pub: dict[str, Any] = {"circuit": text, "shots": shots}
        if values is not None:
            pub["parameter_values"] = values
        job = self.run([pub], seed=seed, method=method, device=device, bitstrings=bitstrings)
        result = job["result"]
        return SampleResult(result["pubs"][0], result["metadata"], job.get("id"))

    def estimate(
        self,
        circuit: Any,
        observables: Any,
        parameter_values: Any = None,
        precision: float | None = None,
        seed: int | None = None,
        method: str = "auto",
        *,
        device: str = "CPU",
    ) -> EstimateResult:
        text, values = circuit_payload(circuit, _plain(parameter_values))
        pub: dict[str, Any] = {"circuit": text, "observables": _plain(observables)}
        if values is not None:
            pub["parameter_values"] = values
        if precision is not None:
            pub["precision"] = precision
        job = self.run([pub], seed=seed, method=method, device=device)
        result = job["result"]
        return EstimateResult(result["pubs"][0], result["metadata"], job.get("id"))


async def handle_sdk_call(
    service: QuantumService, namespace: str, op: str, args: dict[str, Any]
) -> Any:
    """Answer a function's `ctx.quantum` call: the gateway calls this for ops `quantum.*`.

    The namespace is the calling function's (enforced by the gateway), never taken from args.
    """
    body = args.get("body") if isinstance(args, Mapping) else None
    if body is None:
        raise BadRequest(f"{op} needs a job body", code="invalid_request")
    if op == OP_DRY_RUN:
        return await service.submit(namespace, body, dry_run=True)
    if op != OP_RUN:
        raise BadRequest(f"unknown quantum operation {op!r}", code="unknown_op")
    key = args.get("idempotency_key")
    job = await service.submit(namespace, body, idempotency_key=key if key else None)
    job = await service.wait_terminal(namespace, job["id"])
    if job["state"] != "succeeded":
        error = job.get("error") or {}
        raise QuantumJobError(
            f"quantum job {job['id']} {job['state']}: {error.get('message', job['state'])}",
            code=str(error.get("code") or f"job_{job['state']}"),
        )
    return job
