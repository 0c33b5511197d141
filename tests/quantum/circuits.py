"""Circuits the quantum tests and the benchmark share, as OpenQASM text."""

from __future__ import annotations

from typing import Any

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""

BELL_STATE_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
h q[0];
cx q[0], q[1];
"""

RY_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
input float[64] theta;
qubit[1] q;
bit[1] c;
ry(theta) q[0];
c[0] = measure q[0];
"""


def ghz(n: int, *, t_gate: bool = False) -> str:
    """GHZ on n qubits; `t_gate` adds a phase that makes it non-Clifford (same counts)."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{n}];", f"creg c[{n}];", "h q[0];"]
    if t_gate:
        lines.append("t q[0];")
    lines += [f"cx q[{i}],q[{i + 1}];" for i in range(n - 1)]
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def quantum_volume(n: int, seed: int = 11) -> str:
    """A quantum-volume model circuit on n qubits, in u3/cx gates."""
    from qiskit import qasm2, transpile
    from qiskit.circuit.library import quantum_volume as qv

    circuit = qv(n, seed=seed)
    circuit.measure_all()
    lowered = transpile(circuit, basis_gates=["u3", "cx"], optimization_level=0, seed_transpiler=1)
    return str(qasm2.dumps(lowered))


def slow_circuit(n: int = 18, layers: int = 12) -> str:
    """Mid-circuit measurements force Aer to simulate shot by shot: minutes for 10⁶ shots."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{n}];", f"creg c[{n}];"]
    for layer in range(layers):
        lines += [f"h q[{i}];" for i in range(n)]
        lines += [f"cx q[{i}],q[{i + 1}];" for i in range(n - 1)]
        lines += [f"rz(0.{layer + 1}) q[{i}];" for i in range(n)]
        lines.append(f"measure q[{layer % n}] -> c[{layer % n}];")
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def direct_counts(qasm: str, shots: int, seed: int, method: str) -> dict[str, Any]:
    """What a user running Aer directly on the same QASM gets."""
    from qiskit import qasm2
    from qiskit_aer import AerSimulator

    circuit = qasm2.loads(qasm, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    result = AerSimulator(method=method).run(circuit, shots=shots, seed_simulator=seed).result()
    counts: dict[str, Any] = result.get_counts()
    return counts
