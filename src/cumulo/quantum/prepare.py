"""A checked request → circuits a worker can run at once: parsed, shaped, admitted, encoded.

This is all the work that can fail on the user's input, done before a job is queued, so a bad
job is refused at submission (400/422) and a queued job fails only for run-time reasons.
CPU-bound; the service runs it on a thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cumulo.errors import BadRequest
from cumulo.quantum.admission import Admission, CircuitInfo, admit, circuit_info
from cumulo.quantum.qasm import parse_qasm
from cumulo.quantum.spec import JobSpec, Limits, Observable, PubSpec

_MAX_EXPANSION_DEPTH = 16
_ALWAYS_SUPPORTED = frozenset({"measure", "reset", "barrier", "delay"})


@dataclass(frozen=True, slots=True)
class PreparedPub:
    kind: str
    circuit: Any  # qiskit.QuantumCircuit, lowered to the chosen method's gates
    info: CircuitInfo
    shots: int
    precision: float
    param_names: tuple[str, ...]
    values: list[list[float]]  # one row per binding, columns in param_names order
    param_shape: tuple[int, ...]
    shape: tuple[int, ...]
    paulis: tuple[str, ...]  # estimator: the distinct Pauli strings to evaluate
    observables: list[list[tuple[int, float]]]  # estimator: terms (pauli index, coeff), flat
    obs_shape: tuple[int, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "circuit": circuit_to_bytes(self.circuit),
            "shots": self.shots,
            "precision": self.precision,
            "param_names": list(self.param_names),
            "values": self.values,
            "param_shape": list(self.param_shape),
            "shape": list(self.shape),
            "paulis": list(self.paulis),
            "observables": [[[i, c] for i, c in terms] for terms in self.observables],
            "obs_shape": list(self.obs_shape),
        }


@dataclass(frozen=True, slots=True)
class PreparedJob:
    spec: JobSpec
    pubs: tuple[PreparedPub, ...]
    admission: Admission
    wire: list[dict[str, Any]]  # what the worker receives; encoded here, off the event loop


def circuit_to_bytes(circuit: Any) -> bytes:
    """QPY, Qiskit's own binary format: about 3x faster than pickle both ways, and plain data."""
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return buffer.getvalue()


def circuit_from_bytes(data: bytes) -> Any:
    from qiskit import qpy

    return qpy.load(io.BytesIO(data))[0]


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest(f"{field} {problem}", code="invalid_request")


def _as_array(value: Any, field: str) -> np.ndarray[Any, Any]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad(field, "must be numbers in nested lists of equal length") from None
    if not np.all(np.isfinite(array)):
        raise _bad(field, "must be finite numbers")
    return array


def bindings(
    value: Any, names: Sequence[str], field: str, limits: Limits
) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    """parameter_values → an array of shape (*shape, len(names)) and that shape.

    A list's last axis holds one value per parameter, in `names` order (Qiskit's: sorted by
    name); an object maps each name to a value or an array of the sweep's shape.
    """
    p = len(names)
    if value is None or (isinstance(value, list) and not value and p == 0):
        if p:
            raise _bad(field, f"is missing: the circuit has parameters {', '.join(names)}")
        return np.zeros((0,)), ()
    if p == 0:
        raise _bad(field, "was given, but the circuit has no parameters")
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        extra = sorted(set(value) - set(names))
        if missing or extra:
            problem = f"must name exactly the parameters {', '.join(names)}"
            raise _bad(field, problem + (f"; unknown: {', '.join(extra)}" if extra else ""))
        arrays = [_as_array(value[n], f"{field}.{n}") for n in names]
        if len({a.shape for a in arrays}) != 1:
            raise _bad(field, "has values of different shapes for different parameters")
        array = np.stack(arrays, axis=-1)
    else:
        array = _as_array(value, field)
        if array.ndim == 0 or (p == 1 and array.shape[-1] != 1):
            array = array[..., np.newaxis]
        if array.shape[-1] != p:
            raise _bad(
                field,
                f"has {array.shape[-1]} value(s) per binding; the circuit has {p} parameters "
                f"({', '.join(names)}, in that order)",
            )
    shape = tuple(int(d) for d in array.shape[:-1])
    if math.prod(shape) > limits.max_bindings:
        raise _bad(field, f"has {math.prod(shape)} bindings; at most {limits.max_bindings}")
    if math.prod(shape) == 0:
        raise _bad(field, "has no bindings")
    return array, shape


def _observables(
    pub: PubSpec, num_qubits: int, field: str
) -> tuple[tuple[str, ...], list[list[tuple[int, float]]]]:
    flat: list[Observable] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        else:
            flat.append(node)

    walk(pub.observables)
    index: dict[str, int] = {}
    terms: list[list[tuple[int, float]]] = []
    for k, observable in enumerate(flat):
        row: list[tuple[int, float]] = []
        for pauli, coeff in observable.items():
            if len(pauli) != num_qubits:
                raise _bad(
                    f"{field}.observables",
                    f"entry {k} ({pauli!r}) acts on {len(pauli)} qubits, but the circuit has "
                    f"{num_qubits}; a Pauli string has one letter per qubit, qubit 0 rightmost",
                )
            row.append((index.setdefault(pauli, len(index)), coeff))
        terms.append(row)
    return tuple(index), terms


def _aer_basis(method: str) -> frozenset[str] | None:
    try:
        from qiskit_aer.backends.backend_utils import BASIS_GATES
    except ImportError:  # pragma: no cover - private module moved; Aer then reports the gate
        return None
    return frozenset(BASIS_GATES[method]) | _ALWAYS_SUPPORTED


# Gates of OpenQASM 3's stdgates.inc (less its aliases CX, phase, cphase): they travel as
# OpenQASM 3 by name, with no gate definition, so the worker sees Qiskit's standard gates.
STDGATES = frozenset(
    {"p", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "rx", "ry", "rz", "cx", "cy"}
    | {"cz", "cp", "crx", "cry", "crz", "ch", "swap", "ccx", "cswap", "cu", "id", "u1", "u2"}
    | {"u3"}
)
# What `auto` may choose for a circuit with non-Clifford gates (Clifford ones go to stabilizer,
# whose gates all statevector and matrix_product_state have too).
_AUTO_METHODS = ("statevector", "matrix_product_state")


def basis_gates(method: str) -> list[str]:
    """The standard gates `method` simulates natively: a backend's basis for transpiling."""
    gates = set(STDGATES)
    for m in _AUTO_METHODS if method == "auto" else (method,):
        native = _aer_basis(m)
        if native is not None:
            gates &= native
    return sorted(gates)


def _lower(circuit: Any, method: str, field: str) -> Any:
    """Expand gates Aer has no native kernel for (custom QASM gates) by their definitions."""
    basis = _aer_basis(method)
    if basis is None:
        return circuit
    for _ in range(_MAX_EXPANSION_DEPTH):
        unknown = {inst.operation.name for inst in circuit.data} - basis
        if not unknown:
            return circuit
        try:
            circuit = circuit.decompose(gates_to_decompose=sorted(unknown))
        except Exception as exc:  # definitions can fail in many ways
            raise _bad(field, f"uses gate(s) {', '.join(sorted(unknown))}: {exc}") from None
    raise _bad(field, f"uses gate(s) {', '.join(sorted(unknown))} that {method} cannot run")


def _shape_pub(pub: PubSpec, circuit: Any, field: str, limits: Limits) -> dict[str, Any]:
    names = tuple(str(p.name) for p in circuit.parameters)
    values, param_shape = bindings(pub.parameter_values, names, f"{field}.parameter_values", limits)
    rows = values.reshape(-1, len(names)).tolist() if names else [[]]
    if pub.kind == "sampler":
        if circuit.num_clbits == 0:
            raise _bad(f"{field}.circuit", "measures nothing: a sampler PUB needs measurements")
        return {
            "circuit": circuit,
            "names": names,
            "rows": rows,
            "param_shape": param_shape,
            "shape": param_shape,
            "paulis": (),
            "terms": [],
        }
    stripped = circuit.remove_final_measurements(inplace=False)
    if any(inst.operation.name == "measure" for inst in stripped.data):
        raise _bad(f"{field}.circuit", "measures mid-circuit; estimator circuits may not")
    paulis, terms = _observables(pub, stripped.num_qubits, field)
    try:
        shape = tuple(np.broadcast_shapes(pub.observables_shape, param_shape))
    except ValueError:
        raise _bad(
            field,
            f"observables of shape {list(pub.observables_shape)} do not broadcast with "
            f"parameter_values of shape {list(param_shape)}",
        ) from None
    return {
        "circuit": stripped,
        "names": names,
        "rows": rows,
        "param_shape": param_shape,
        "shape": shape,
        "paulis": paulis,
        "terms": terms,
    }


def prepare_job(
    spec: JobSpec, *, limits: Limits, available_bytes: int, devices: Sequence[str]
) -> PreparedJob:
    """Parse, shape and admit every PUB of a job; raise 400/422 on the first problem."""
    parsed: dict[str, Any] = {}
    shaped: list[dict[str, Any]] = []
    for i, pub in enumerate(spec.pubs):
        field = f"pubs[{i}]"
        if pub.circuit not in parsed:
            try:
                parsed[pub.circuit] = parse_qasm(pub.circuit).circuit
            except BadRequest as exc:
                exc.message = f"{field}.circuit: {exc.message}"
                exc.args = (exc.message,)
                raise
        shaped.append(_shape_pub(pub, parsed[pub.circuit], field, limits))
    infos = [circuit_info(s["circuit"]) for s in shaped]
    admission = admit(
        infos, method=spec.method, device=spec.device, available=available_bytes, devices=devices
    )
    pubs = tuple(
        PreparedPub(
            kind=pub.kind,
            circuit=_lower(s["circuit"], admission.method, f"pubs[{i}].circuit"),
            info=info,
            shots=pub.shots,
            precision=pub.precision,
            param_names=s["names"],
            values=s["rows"],
            param_shape=s["param_shape"],
            shape=s["shape"],
            paulis=s["paulis"],
            observables=s["terms"],
            obs_shape=pub.observables_shape,
        )
        for i, (pub, s, info) in enumerate(zip(spec.pubs, shaped, infos, strict=True))
    )
    return PreparedJob(spec, pubs, admission, [pub.to_wire() for pub in pubs])
