"""Admission control: which simulation method, and how much memory it needs, before running.

The rule (also in docs/quantum.md):

* statevector needs 16·2ⁿ bytes, density_matrix 16·4ⁿ (one complex128 per amplitude);
* stabilizer needs a 2n×2n bit tableau, so any width fits;
* matrix_product_state needs 2·16·Σχᵢχᵢ₊₁ bytes (×2 for the SVD workspace). χ, the bond
  dimension at a cut, is bounded by 2^min(left qubits, right qubits) and by the product of the
  operator Schmidt ranks of the gates that cross the cut, so a GHZ chain stays at χ = 2;
* `auto` picks stabilizer when every gate is Clifford, statevector when it fits the memory
  budget, and matrix_product_state for circuits too wide for statevector.

A job whose chosen method does not fit the budget is refused (422) before it is queued.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cumulo.errors import Unprocessable

CLIFFORD_GATES = frozenset(
    {"id", "x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz", "swap", "ecr", "pauli"}
)
NON_GATES = frozenset({"measure", "reset", "barrier", "delay"})
# Two-qubit gates whose operator Schmidt rank is 2 (one bit of bond dimension per crossing).
_RANK_TWO = frozenset(
    {"cx", "cy", "cz", "ch", "cp", "crx", "cry", "crz", "cu", "cu1", "cu3", "csx", "cs", "csdg"}
    | {"rzz", "rxx", "ryy", "rzx", "ecr", "cu2"}
)
AUTO_CHOICES = ("stabilizer", "statevector", "matrix_product_state")
GPU_METHODS = frozenset({"statevector", "density_matrix"})
MPS_WORKSPACE_FACTOR = 2


@dataclass(frozen=True, slots=True)
class CircuitInfo:
    num_qubits: int
    num_clbits: int
    non_clifford: frozenset[str]
    cut_log_bonds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Admission:
    method: str
    device: str
    estimated_bytes: int
    available_bytes: int
    per_pub_bytes: tuple[int, ...]
    num_qubits: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "device": self.device,
            "num_qubits": self.num_qubits,
            "estimated_memory_bytes": self.estimated_bytes,
            "available_memory_bytes": self.available_bytes,
            "pubs": [{"estimated_memory_bytes": b} for b in self.per_pub_bytes],
        }


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def circuit_info(circuit: Any) -> CircuitInfo:
    """What admission needs from a circuit: width, gate set and an MPS bond-dimension bound."""
    n = int(circuit.num_qubits)
    non_clifford: set[str] = set()
    # Difference array over the n-1 cuts; a gate on qubits a<…<b adds its weight to cuts a..b-1.
    delta = [0] * (n + 1)
    for instruction in circuit.data:
        name = instruction.operation.name
        if name not in CLIFFORD_GATES and name not in NON_GATES:
            non_clifford.add(name)
        qubits = instruction.qubits
        if len(qubits) < 2 or name in NON_GATES:
            continue
        positions = [circuit.find_bit(q).index for q in qubits]
        low, high = min(positions), max(positions)
        weight = 1 if name in _RANK_TWO else 2 * (len(qubits) - 1)
        delta[low] += weight
        delta[high] -= weight
    bonds: list[int] = []
    running = 0
    for cut in range(n - 1):
        running += delta[cut]
        bonds.append(min(running, cut + 1, n - cut - 1))
    return CircuitInfo(n, int(circuit.num_clbits), frozenset(non_clifford), tuple(bonds))


def memory_bytes(method: str, info: CircuitInfo) -> int:
    n = info.num_qubits
    if method == "statevector":
        return int(16 * 2**n)
    if method == "density_matrix":
        return int(16 * 4**n)
    if method == "stabilizer":
        words = -(-max(n, 1) // 64)
        return 2 * n * 2 * words * 8 + 2 * n
    if method == "matrix_product_state":
        chis = [1, *(2**b for b in info.cut_log_bonds), 1] if n else [1, 1]
        tensors = sum(2 * 16 * chis[i] * chis[i + 1] for i in range(max(n, 1)))
        return MPS_WORKSPACE_FACTOR * tensors
    raise ValueError(f"unknown method {method!r}")


def available_memory_bytes(cap: int | None) -> int:
    """The budget one job may use: the configured cap, else 80% of MemAvailable."""
    if cap is not None:
        return cap
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024 * 8 // 10
    except OSError:
        pass
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages) // 2


# The width a backend advertises (its Target) at most: stabilizer and low-entanglement MPS
# circuits would fit far wider in memory, but nothing real needs it, and Qiskit's transpiler
# does work per advertised qubit.
MAX_ADVERTISED_QUBITS = 10_000


def max_qubits(method: str, available: int) -> int:
    """The widest circuit `method` could be admitted for within `available` bytes.

    Exact for statevector and density_matrix; for matrix_product_state the bound of a circuit
    without entanglement (admission still checks each circuit's bond dimensions).
    `auto` is the widest of the methods it chooses from. Capped at MAX_ADVERTISED_QUBITS.
    """
    if method == "auto":
        return max(max_qubits(m, available) for m in AUTO_CHOICES)
    low, high = 0, MAX_ADVERTISED_QUBITS  # memory_bytes grows with n for every method
    while low < high:
        mid = (low + high + 1) // 2
        if memory_bytes(method, CircuitInfo(mid, 0, frozenset(), (0,) * (mid - 1))) <= available:
            low = mid
        else:
            high = mid - 1
    return low


def _too_big(method: str, info: CircuitInfo, needed: int, available: int) -> Unprocessable:
    return Unprocessable(
        f"{method} simulation of {info.num_qubits} qubits needs {needed} bytes "
        f"({human_bytes(needed)}); {available} bytes ({human_bytes(available)}) are available",
        code="insufficient_memory",
    )


def _widest(infos: Sequence[CircuitInfo], method: str) -> tuple[CircuitInfo, list[int]]:
    per_pub = [memory_bytes(method, info) for info in infos]
    worst = max(range(len(infos)), key=per_pub.__getitem__)
    return infos[worst], per_pub


def _all_clifford(infos: Iterable[CircuitInfo]) -> bool:
    return all(not info.non_clifford for info in infos)


def admit(
    infos: Sequence[CircuitInfo],
    *,
    method: str,
    device: str,
    available: int,
    devices: Sequence[str],
) -> Admission:
    """Choose the method for a job's circuits and check its memory; raise 422 if impossible."""
    if device not in devices:
        raise Unprocessable(
            f"device {device} is not available here (available: {', '.join(devices)}); "
            "GPU simulation needs the qiskit-aer-gpu package and a CUDA device",
            code="device_unavailable",
        )
    width = max(info.num_qubits for info in infos)
    if method == "auto":
        if device == "CPU" and _all_clifford(infos):
            method = "stabilizer"
        else:
            info, per_pub = _widest(infos, "statevector")
            if max(per_pub) <= available or device != "CPU":
                method = "statevector"
            else:
                _, mps = _widest(infos, "matrix_product_state")
                if max(mps) > available:
                    raise Unprocessable(
                        f"no simulation method fits {info.num_qubits} qubits: statevector needs "
                        f"{max(per_pub)} bytes ({human_bytes(max(per_pub))}), "
                        f"matrix_product_state up to {max(mps)} bytes "
                        f"({human_bytes(max(mps))}); {available} bytes "
                        f"({human_bytes(available)}) are available",
                        code="insufficient_memory",
                    )
                method = "matrix_product_state"
    if device == "GPU" and method not in GPU_METHODS:
        raise Unprocessable(
            f"method {method} does not run on GPU (GPU methods: statevector, density_matrix)",
            code="device_unavailable",
        )
    if method == "stabilizer" and not _all_clifford(infos):
        gates = sorted(set().union(*(info.non_clifford for info in infos)))
        raise Unprocessable(
            f"the stabilizer method simulates Clifford circuits only; this job uses "
            f"non-Clifford gate(s): {', '.join(gates[:10])}",
            code="method_unsupported",
        )
    info, per_pub = _widest(infos, method)
    needed = max(per_pub)
    if needed > available:
        raise _too_big(method, info, needed, available)
    return Admission(method, device, needed, available, tuple(per_pub), width)
