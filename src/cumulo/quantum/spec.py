"""The job request body, checked field by field before any circuit is parsed.

Every problem is a `BadRequest` naming the field (`pubs[1].shots`), so a client can fix it
without guessing. Nothing here imports Qiskit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from cumulo.errors import BadRequest

MAX_WAIT_S = 60.0  # longest long-poll a client may ask for

METHODS = ("auto", "statevector", "density_matrix", "stabilizer", "matrix_product_state")
DEVICES = ("CPU", "GPU")
BIT_ORDERS = ("little", "big")

MAX_PUBS = 64
MAX_CIRCUIT_CHARS = 4_000_000
MAX_SEED = 2**31 - 1
_PAULI = re.compile(r"^[IXYZ]+$")

PubKind = Literal["sampler", "estimator"]
# An observable is a real-weighted sum of Pauli strings: {"ZZ": 1.0, "XX": 0.5}.
Observable = dict[str, float]


@dataclass(frozen=True, slots=True)
class Limits:
    max_shots: int = 1_000_000
    max_bitstring_shots: int = 100_000
    max_bindings: int = 10_000
    max_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class PubSpec:
    kind: PubKind
    circuit: str
    shots: int
    parameter_values: Any  # JSON as sent; shaped against the circuit's parameters later
    observables: Any  # estimator only: nested lists whose leaves are Observable
    observables_shape: tuple[int, ...]
    precision: float


@dataclass(frozen=True, slots=True)
class JobSpec:
    pubs: tuple[PubSpec, ...]
    method: str
    device: str
    seed: int | None
    bitstrings: bool
    bit_order: str
    timeout_s: float | None


def _bad(field: str, problem: str) -> BadRequest:
    return BadRequest(f"{field} {problem}", code="invalid_request")


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, f"must be an integer, not {type(value).__name__}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, f"must be a number, not {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise _bad(field, "must be finite")
    return result


def _observable(value: Any, field: str) -> Observable:
    terms: dict[str, Any]
    if isinstance(value, str):
        terms = {value: 1.0}
    elif isinstance(value, dict) and value:
        terms = value
    else:
        raise _bad(field, 'must be a Pauli string like "ZZ" or a {"ZZ": 0.5, ...} sum')
    result: Observable = {}
    for label, coeff in terms.items():
        pauli = str(label).upper()
        if not _PAULI.match(pauli):
            raise _bad(field, f"has {label!r}, which is not a Pauli string of I, X, Y, Z")
        result[pauli] = result.get(pauli, 0.0) + _number(coeff, f"{field}[{label!r}]")
    if len({len(p) for p in result}) != 1:
        raise _bad(field, "mixes Pauli strings of different lengths")
    return result


def _observables(value: Any, field: str) -> tuple[Any, tuple[int, ...]]:
    """Nested lists of observables → (same nesting with Observable leaves, their shape)."""
    if not isinstance(value, list):
        return _observable(value, field), ()
    if not value:
        raise _bad(field, "must not be empty")
    items = [_observables(item, f"{field}[{i}]") for i, item in enumerate(value)]
    shapes = {shape for _, shape in items}
    if len(shapes) != 1:
        raise _bad(field, "is ragged: nested lists must all have the same length")
    return [obs for obs, _ in items], (len(items), *shapes.pop())


def _pub(raw: Any, index: int, limits: Limits) -> PubSpec:
    field = f"pubs[{index}]"
    if not isinstance(raw, dict):
        raise _bad(field, "must be an object with a 'circuit'")
    known = {"circuit", "shots", "parameter_values", "observables", "precision"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(field, f"has unknown field(s) {', '.join(unknown)}")
    circuit = raw.get("circuit")
    if not isinstance(circuit, str) or not circuit.strip():
        raise _bad(f"{field}.circuit", "must be OpenQASM 2 or 3 text")
    if len(circuit) > MAX_CIRCUIT_CHARS:
        raise _bad(f"{field}.circuit", f"is longer than {MAX_CIRCUIT_CHARS} characters")
    values = raw.get("parameter_values")
    if values is not None and not isinstance(values, list | dict | int | float):
        raise _bad(f"{field}.parameter_values", "must be a list, a number or a name→value object")
    if "observables" in raw:
        if "shots" in raw:
            raise _bad(field, "is an estimator PUB (it has observables); use precision, not shots")
        observables, shape = _observables(raw["observables"], f"{field}.observables")
        precision = 0.0
        if raw.get("precision") is not None:
            precision = _number(raw["precision"], f"{field}.precision")
            if not 0.0 <= precision <= 1.0:
                raise _bad(f"{field}.precision", "must be between 0 (exact) and 1")
            if precision and math.ceil(precision**-2) > limits.max_shots:
                raise _bad(
                    f"{field}.precision",
                    f"needs {math.ceil(precision**-2)} shots, over the cap of {limits.max_shots}",
                )
        return PubSpec("estimator", circuit, 0, values, observables, shape, precision)
    if "precision" in raw:
        raise _bad(field, "is a sampler PUB (no observables); use shots, not precision")
    shots = _int(raw.get("shots", 1024), f"{field}.shots")
    if not 1 <= shots <= limits.max_shots:
        raise _bad(f"{field}.shots", f"must be between 1 and {limits.max_shots}, not {shots}")
    return PubSpec("sampler", circuit, shots, values, None, (), 0.0)


def parse_job_request(body: Any, limits: Limits) -> JobSpec:
    """Check a request body; raise `BadRequest` on the first problem."""
    if not isinstance(body, dict):
        raise _bad("body", 'must be a JSON object like {"pubs": [{"circuit": "..."}]}')
    known = {"pubs", "method", "device", "seed", "bitstrings", "bit_order", "timeout_s"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad("body", f"has unknown field(s) {', '.join(unknown)}")
    pubs = body.get("pubs")
    if not isinstance(pubs, list) or not pubs:
        raise _bad("pubs", "must be a non-empty list")
    if len(pubs) > MAX_PUBS:
        raise _bad("pubs", f"has {len(pubs)} entries; at most {MAX_PUBS} per job")
    method = body.get("method", "auto")
    if method == "automatic":
        method = "auto"
    if method not in METHODS:
        raise _bad("method", f"must be one of {', '.join(METHODS)}, not {method!r}")
    device = str(body.get("device", "CPU")).upper()
    if device not in DEVICES:
        raise _bad("device", f"must be CPU or GPU, not {body.get('device')!r}")
    seed = body.get("seed")
    if seed is not None:
        seed = _int(seed, "seed")
        if not 0 <= seed <= MAX_SEED:
            raise _bad("seed", f"must be between 0 and {MAX_SEED}")
    bitstrings = body.get("bitstrings", False)
    if not isinstance(bitstrings, bool):
        raise _bad("bitstrings", "must be true or false")
    bit_order = body.get("bit_order", "little")
    if bit_order not in BIT_ORDERS:
        raise _bad("bit_order", "must be 'little' (bit 0 rightmost, as Qiskit) or 'big'")
    timeout_s = body.get("timeout_s")
    if timeout_s is not None:
        timeout_s = _number(timeout_s, "timeout_s")
        if not 0 < timeout_s <= limits.max_timeout_s:
            raise _bad("timeout_s", f"must be in (0, {limits.max_timeout_s:g}] seconds")
    specs = tuple(_pub(raw, i, limits) for i, raw in enumerate(pubs))
    if bitstrings:
        for i, pub in enumerate(specs):
            if pub.shots > limits.max_bitstring_shots:
                raise _bad(
                    f"pubs[{i}].shots",
                    f"is over {limits.max_bitstring_shots}, the cap when bitstrings are returned",
                )
    return JobSpec(specs, method, device, seed, bitstrings, bit_order, timeout_s)
