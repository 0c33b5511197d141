"""VQE for the hydrogen molecule: a classical optimiser around `ctx.quantum.estimate`.

The Hamiltonian is H2 at its equilibrium bond length (0.735 Å) in the STO-3G basis, reduced to
two qubits (parity mapping); its exact ground-state energy is -1.857275 hartree (electronic
part). Each step sends one estimator PUB that sweeps the current parameters and all their
parameter-shift neighbours, so the energy and the exact gradient come back in one job.

Try it:  cumulo deploy examples/quantum_vqe.py && cumulo invoke vqe --data '{"steps": 80}'
"""

import math

import cumulo

ANSATZ = """OPENQASM 3.0;
include "stdgates.inc";
input float[64] t0;
input float[64] t1;
input float[64] t2;
input float[64] t3;
qubit[2] q;
ry(t0) q[0];
ry(t1) q[1];
cx q[0], q[1];
ry(t2) q[0];
ry(t3) q[1];
"""

# Pauli strings are written qubit 0 rightmost, as in Qiskit.
H2 = {
    "II": -1.052373245772859,
    "IZ": 0.39793742484318045,
    "ZI": -0.39793742484318045,
    "ZZ": -0.01128010425623538,
    "XX": 0.18093119978423156,
}
EXACT_ENERGY = -1.857275030202382


def shifted(theta: list[float]) -> list[list[float]]:
    """theta, then theta ± π/2 along each axis: the parameter-shift rule's points."""
    points = [list(theta)]
    for k in range(len(theta)):
        for sign in (1.0, -1.0):
            point = list(theta)
            point[k] += sign * math.pi / 2
            points.append(point)
    return points


@cumulo.function(memory_mb=512, timeout_s=120)
def vqe(event: dict, ctx: cumulo.Context) -> dict:
    steps = int(event.get("steps", 80))
    rate = float(event.get("learning_rate", 0.4))
    tolerance = float(event.get("tolerance", 1e-7))
    precision = event.get("precision")  # None: exact expectation values
    theta = [float(x) for x in event.get("initial", [0.3, -0.2, 0.1, 0.4])]
    history: list[float] = []
    for _ in range(steps):
        result = ctx.quantum.estimate(
            ANSATZ, H2, parameter_values=shifted(theta), precision=precision
        )
        energies = result.evs
        history.append(energies[0])
        gradient = [(energies[1 + 2 * k] - energies[2 + 2 * k]) / 2 for k in range(len(theta))]
        theta = [t - rate * g for t, g in zip(theta, gradient, strict=True)]
        if len(history) > 1 and abs(history[-2] - history[-1]) < tolerance:
            break
    return {
        "energy": history[-1],
        "exact_energy": EXACT_ENERGY,
        "error": history[-1] - EXACT_ENERGY,
        "parameters": theta,
        "iterations": len(history),
        "history": history,
    }
