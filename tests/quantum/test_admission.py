"""The admission rule on its own: memory per method and the choice `auto` makes."""

from __future__ import annotations

import pytest

from cumulo.errors import Unprocessable
from cumulo.quantum.admission import (
    MAX_ADVERTISED_QUBITS,
    admit,
    circuit_info,
    max_qubits,
    memory_bytes,
)
from cumulo.quantum.qasm import parse_qasm
from tests.quantum.circuits import ghz, quantum_volume

GIB = 2**30


def test_memory_formulas() -> None:
    ghz10 = circuit_info(parse_qasm(ghz(10)).circuit)
    assert memory_bytes("statevector", ghz10) == 16 * 2**10
    assert memory_bytes("density_matrix", ghz10) == 16 * 4**10
    assert memory_bytes("stabilizer", ghz10) < 1024


def test_mps_bond_bound_follows_entanglement() -> None:
    chain = circuit_info(parse_qasm(ghz(50)).circuit)
    assert set(chain.cut_log_bonds) == {1}
    volume = circuit_info(parse_qasm(quantum_volume(8)).circuit)
    assert volume.cut_log_bonds == (1, 2, 3, 4, 3, 2, 1)


@pytest.mark.parametrize(
    ("qasm", "available", "method"),
    [
        (ghz(30), GIB, "stabilizer"),
        (ghz(20, t_gate=True), GIB, "statevector"),
        (ghz(30, t_gate=True), GIB, "matrix_product_state"),
    ],
)
def test_auto_choice(qasm: str, available: int, method: str) -> None:
    circuit = circuit_info(parse_qasm(qasm).circuit)
    chosen = admit([circuit], method="auto", device="CPU", available=available, devices=["CPU"])
    assert chosen.method == method


def test_nothing_fits() -> None:
    circuit = circuit_info(parse_qasm(quantum_volume(12)).circuit)
    with pytest.raises(Unprocessable, match="no simulation method fits 12 qubits"):
        admit([circuit], method="auto", device="CPU", available=2**15, devices=["CPU"])


def test_gpu_needs_a_gpu_method() -> None:
    circuit = circuit_info(parse_qasm(ghz(4)).circuit)
    with pytest.raises(Unprocessable, match="does not run on GPU"):
        admit(
            [circuit],
            method="matrix_product_state",
            device="GPU",
            available=GIB,
            devices=["CPU", "GPU"],
        )


def test_widest_admissible_circuit_per_method() -> None:
    # 2 GiB = 16·2²⁷ bytes: 27 qubits of statevector, 13 of density matrix (16·4¹³ ≤ 2 GiB).
    assert max_qubits("statevector", 2 * GIB) == 27
    assert max_qubits("statevector", 2 * GIB - 1) == 26
    assert max_qubits("density_matrix", 2 * GIB) == 13
    assert max_qubits("stabilizer", 2 * GIB) == MAX_ADVERTISED_QUBITS
    assert max_qubits("stabilizer", 1024) == 30  # 34 bytes of tableau a qubit, up to 64
    assert max_qubits("auto", 2 * GIB) == MAX_ADVERTISED_QUBITS
    assert max_qubits("statevector", 0) == 0
