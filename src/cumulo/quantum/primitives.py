"""Qiskit's V2 primitives on a cumulo platform: `SamplerV2` and `EstimatorV2`.

They implement `qiskit.primitives.BaseSamplerV2` / `BaseEstimatorV2`, so a Qiskit program
written for Aer's primitives runs unchanged once it constructs these instead::

    sampler = SamplerV2(seed=7)                 # platform from CUMULO_URL/… like cumulo.client
    result = sampler.run([(circuit, values)], shots=1000).result()
    result[0].data.meas.get_counts()

One `run` call is one cumulo quantum job (all its PUBs); the job handle is a
`qiskit.primitives.BasePrimitiveJob` backed by the platform's job API. Circuits travel as
OpenQASM 3 (`cumulo.quantum.sdk.circuit_payload`), results come back as Qiskit's own
containers (`PrimitiveResult`, `SamplerPubResult` with a `BitArray` per classical register,
`PubResult` with `evs`/`stds`).

This module imports Qiskit; `cumulo.quantum` loads it only when one of its names is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Self

import numpy as np
from qiskit.primitives import (
    BaseEstimatorV2,
    BasePrimitiveJob,
    BaseSamplerV2,
    PrimitiveResult,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers import BitArray, DataBin
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike
from qiskit.providers import JobStatus

from cumulo.client import Client, raise_for_quantum_job
from cumulo.errors import BadRequest, Conflict
from cumulo.quantum.sdk import circuit_payload

# The platform returns every shot's outcome up to this many shots per PUB
# (cumulo.quantum.spec.Limits.max_bitstring_shots); above it a BitArray is built from counts.
MAX_BITSTRING_SHOTS = 100_000

_STATUS = {
    "queued": JobStatus.QUEUED,
    "running": JobStatus.RUNNING,
    "cancelling": JobStatus.RUNNING,
    "succeeded": JobStatus.DONE,
    "failed": JobStatus.ERROR,
    "cancelled": JobStatus.CANCELLED,
}
_TERMINAL = ("succeeded", "failed", "cancelled")

Converter = Callable[[dict[str, Any]], PrimitiveResult[Any]]


# Qiskit ships no type information: its base classes are Any to mypy.
class CumuloJob(BasePrimitiveJob[PrimitiveResult[Any], JobStatus]):  # type: ignore[misc]
    """A quantum job on the platform, seen as a Qiskit primitive job.

    `status()`, `done()`, `running()`, `cancelled()` and `in_final_state()` ask the platform
    (no waiting); `result()` long-polls until the job is terminal.
    """

    def __init__(self, client: Client, job: dict[str, Any], convert: Converter) -> None:
        super().__init__(str(job["id"]))
        self._client = client
        self._job = job
        self._convert = convert
        self._result: PrimitiveResult[Any] | None = None

    def _refresh(self) -> dict[str, Any]:
        if self._job["state"] not in _TERMINAL:  # terminal states never change
            self._job = self._client.quantum_job(self._job_id)
        return self._job

    def job(self) -> dict[str, Any]:
        """The platform's job document (state, queue position, progress, events, error)."""
        return self._refresh()

    def status(self) -> JobStatus:
        return _STATUS[self._refresh()["state"]]

    def done(self) -> bool:
        """True once the job has succeeded."""
        return bool(self._refresh()["state"] == "succeeded")

    def running(self) -> bool:
        return self._refresh()["state"] in ("running", "cancelling")

    def cancelled(self) -> bool:
        return bool(self._refresh()["state"] == "cancelled")

    def in_final_state(self) -> bool:
        return self._refresh()["state"] in _TERMINAL

    def cancel(self) -> bool:
        """Ask the platform to cancel; False if the job had already finished otherwise."""
        try:
            self._job = self._client.cancel_quantum_job(self._job_id)
        except Conflict:
            self._refresh()
            return False
        return True

    def result(self, timeout: float | None = None) -> PrimitiveResult[Any]:
        """Wait for the job and return its results; QuantumJobError if it failed or was
        cancelled, TimeoutError after `timeout` seconds (None: no limit)."""
        if self._result is None:
            if self._job["state"] not in _TERMINAL:
                self._job = self._client.wait_quantum_job(self._job_id, timeout=timeout)
            raise_for_quantum_job(self._job)
            self._result = self._convert(self._job)
        return self._result

    def __repr__(self) -> str:
        return f"<CumuloJob {self._job_id} {self._job['state']}>"


class PlatformLink:
    """The client a primitive or a backend sends with: one it made from `url`/`api_key`/
    `namespace` (closed with it), or the caller's `client` (left open)."""

    def __init__(
        self, client: Client | None, url: str | None, api_key: str | None, namespace: str
    ) -> None:
        if client is not None and (url is not None or api_key is not None):
            raise ValueError("pass either client or url/api_key, not both")
        self._owns_client = client is None
        self._client = client or Client(url, api_key, namespace=namespace)

    @property
    def client(self) -> Client:
        return self._client

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Primitive(PlatformLink):
    """What the sampler and the estimator share: the platform client and the job options."""

    def __init__(
        self,
        *,
        seed: int | None,
        method: str,
        device: str,
        timeout_s: float | None,
        client: Client | None,
        url: str | None,
        api_key: str | None,
        namespace: str,
    ) -> None:
        super().__init__(client, url, api_key, namespace)
        self._seed = seed
        self._method = method
        self._device = device
        self._timeout_s = timeout_s

    @property
    def seed(self) -> int | None:
        """The job seed: PUB i of a job simulates with seed + i (None: the platform draws one)."""
        return self._seed

    def _submit(self, pubs: list[dict[str, Any]], convert: Converter, **extra: Any) -> CumuloJob:
        body: dict[str, Any] = {"pubs": pubs, "method": self._method, **extra}
        if self._device != "CPU":
            body["device"] = self._device
        if self._seed is not None:
            body["seed"] = self._seed
        if self._timeout_s is not None:
            body["timeout_s"] = self._timeout_s
        job = self._client.submit_quantum_job(body)
        return CumuloJob(self._client, job, convert)


def _payload(pub: SamplerPub | EstimatorPub, index: int) -> tuple[str, Any]:
    """QASM text and parameter values (`{parameter: nested list of the sweep's shape}`)."""
    from qiskit.qasm3 import QASM3ExporterError

    circuit = pub.circuit
    values = pub.parameter_values
    by_parameter = None
    if circuit.parameters:
        array = values.as_array(circuit.parameters)
        by_parameter = {p: array[..., i].tolist() for i, p in enumerate(circuit.parameters)}
    elif values.shape != ():
        raise ValueError(
            f"pubs[{index}] has bindings of shape {values.shape}, but its circuit has no parameters"
        )
    try:
        return circuit_payload(circuit, by_parameter)
    except QASM3ExporterError as exc:
        raise BadRequest(
            f"pubs[{index}].circuit cannot be written as OpenQASM 3: {exc.message}",
            code="invalid_circuit",
        ) from None


def _leaf(nested: Any, index: tuple[int, ...]) -> Any:
    for i in index:
        nested = nested[i]
    return nested


def _bit_array(entry: dict[str, Any], shape: tuple[int, ...], shots: int) -> BitArray:
    """One register's outcomes, shaped (*shape, shots), from its bitstrings or its counts."""
    num_bits = int(entry["num_bits"])
    num_bytes = (num_bits + 7) // 8
    data = np.zeros((*shape, shots, num_bytes), dtype=np.uint8)
    for index in np.ndindex(*shape):
        if "bitstrings" in entry:
            bits = BitArray.from_samples(_leaf(entry["bitstrings"], index), num_bits)
        else:  # shots grouped by outcome, in no particular order; counts are exact
            bits = BitArray.from_counts(_leaf(entry["counts"], index), num_bits)
        data[index] = bits.array
    return BitArray(data, num_bits)


def _registers(circuit: Any, data: dict[str, Any], index: int) -> list[tuple[str, str]]:
    """(name in the user's circuit, name in the platform's result) per classical register.

    The result is keyed by the names in the exported OpenQASM; the exporter keeps valid
    names, and lists registers in the circuit's order, so position is the fallback.
    """
    names = [str(reg.name) for reg in circuit.cregs]
    if all(name in data for name in names):
        return [(name, name) for name in names]
    keys = list(data)
    if len(keys) < len(names):
        raise ValueError(f"pubs[{index}]: the platform returned registers {', '.join(keys)}")
    return list(zip(names, keys[: len(names)], strict=True))


class _OnPlatform:
    """What both primitives share: the platform they send to, closed with them."""

    _platform: _Primitive

    @property
    def seed(self) -> int | None:
        return self._platform.seed

    @property
    def client(self) -> Client:
        return self._platform.client

    def close(self) -> None:
        self._platform.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class SamplerV2(_OnPlatform, BaseSamplerV2):  # type: ignore[misc]
    """Qiskit's SamplerV2 on a cumulo platform's Aer simulators.

    `url`, `api_key` and `namespace` pick the platform the way `cumulo.client.Client` does
    (None: `CUMULO_URL`/`CUMULO_API_KEY`, the CLI's current context, then ./.cumulo); or pass a
    `client`. `method` is an Aer simulation method or "auto" (the platform chooses: stabilizer
    for Clifford circuits, else statevector, else matrix_product_state).
    """

    def __init__(
        self,
        *,
        default_shots: int = 1024,
        seed: int | None = None,
        method: str = "auto",
        device: str = "CPU",
        timeout_s: float | None = None,
        client: Client | None = None,
        url: str | None = None,
        api_key: str | None = None,
        namespace: str = "default",
    ) -> None:
        self._default_shots = default_shots
        self._platform = _Primitive(
            seed=seed,
            method=method,
            device=device,
            timeout_s=timeout_s,
            client=client,
            url=url,
            api_key=api_key,
            namespace=namespace,
        )

    @property
    def default_shots(self) -> int:
        return self._default_shots

    def run(self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None) -> CumuloJob:
        if shots is None:
            shots = self._default_shots
        coerced = [SamplerPub.coerce(pub, shots) for pub in pubs]
        wire: list[dict[str, Any]] = []
        for i, pub in enumerate(coerced):
            text, values = _payload(pub, i)
            entry: dict[str, Any] = {"circuit": text, "shots": pub.shots}
            if values is not None:
                entry["parameter_values"] = values
            wire.append(entry)
        # Every shot's outcome, as Aer's primitives give, whenever the platform returns them.
        bitstrings = all(pub.shots <= MAX_BITSTRING_SHOTS for pub in coerced)

        def convert(job: dict[str, Any]) -> PrimitiveResult[Any]:
            result = job["result"]
            out = []
            for i, (pub, raw) in enumerate(zip(coerced, result["pubs"], strict=True)):
                shape = tuple(raw["shape"])
                meas = {
                    name: _bit_array(raw["data"][key], shape, int(raw["shots"]))
                    for name, key in _registers(pub.circuit, raw["data"], i)
                }
                metadata = {
                    "shots": int(raw["shots"]),
                    "circuit_metadata": pub.circuit.metadata,
                    "simulator_metadata": raw.get("metadata", {}),
                }
                out.append(SamplerPubResult(DataBin(**meas, shape=shape), metadata=metadata))
            return PrimitiveResult(out, metadata=_job_metadata(job))

        return self._platform._submit(wire, convert, bitstrings=bitstrings)


class EstimatorV2(_OnPlatform, BaseEstimatorV2):  # type: ignore[misc]
    """Qiskit's EstimatorV2 on a cumulo platform.

    `default_precision` 0 (Aer's default) gives exact expectation values with std 0; ε > 0
    measures each Pauli term ⌈1/ε²⌉ times, so `evs` carry shot noise and `stds` are their
    standard errors. Platform selection as for `SamplerV2`.
    """

    def __init__(
        self,
        *,
        default_precision: float = 0.0,
        seed: int | None = None,
        method: str = "auto",
        device: str = "CPU",
        timeout_s: float | None = None,
        client: Client | None = None,
        url: str | None = None,
        api_key: str | None = None,
        namespace: str = "default",
    ) -> None:
        self._default_precision = default_precision
        self._platform = _Primitive(
            seed=seed,
            method=method,
            device=device,
            timeout_s=timeout_s,
            client=client,
            url=url,
            api_key=api_key,
            namespace=namespace,
        )

    @property
    def default_precision(self) -> float:
        return self._default_precision

    def run(self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None) -> CumuloJob:
        if precision is None:
            precision = self._default_precision
        coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
        wire: list[dict[str, Any]] = []
        for i, pub in enumerate(coerced):
            if pub.precision < 0:
                raise ValueError(f"pubs[{i}] has precision {pub.precision}; it must be ≥ 0")
            text, values = _payload(pub, i)
            entry: dict[str, Any] = {
                "circuit": text,
                "observables": _observables(pub.observables.sparse_observables_array(), i),
            }
            if values is not None:
                entry["parameter_values"] = values
            if pub.precision > 0:
                entry["precision"] = pub.precision
            wire.append(entry)

        def convert(job: dict[str, Any]) -> PrimitiveResult[Any]:
            out = []
            for pub, raw in zip(coerced, job["result"]["pubs"], strict=True):
                shape = tuple(raw["shape"])
                evs = np.asarray(raw["evs"], dtype=float).reshape(shape)
                stds = np.asarray(raw["stds"], dtype=float).reshape(shape)
                metadata = {
                    "target_precision": pub.precision,
                    "circuit_metadata": pub.circuit.metadata,
                    "simulator_metadata": raw.get("metadata", {}),
                }
                out.append(PubResult(DataBin(evs=evs, stds=stds, shape=shape), metadata=metadata))
            return PrimitiveResult(out, metadata=_job_metadata(job))

        return self._platform._submit(wire, convert)


def _observables(array: np.ndarray[Any, Any], index: int) -> Any:
    """SparseObservables → nested lists of {"Pauli string": real coefficient}.

    Projector terms (|0⟩⟨0|, |+⟩⟨+|, …) that SparseObservable allows are expanded into Paulis,
    the only terms the platform measures.
    """
    from qiskit.quantum_info import SparsePauliOp

    def one(observable: Any) -> dict[str, float]:
        paulis = SparsePauliOp.from_sparse_observable(observable.as_paulis()).simplify()
        terms: dict[str, float] = {}
        for label, coeff in paulis.to_list():
            if abs(coeff.imag) > 1e-12:
                raise ValueError(
                    f"pubs[{index}] has an observable with the complex coefficient {coeff} on "
                    f"{label}: an observable must be Hermitian"
                )
            terms[str(label)] = float(coeff.real)
        return terms

    flat = [one(obs) for obs in array.ravel()]
    if array.ndim == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()


def _job_metadata(job: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(job["result"].get("metadata") or {})
    return {"version": 2, "job_id": job["id"], **metadata}
