"""Quantum jobs: OpenQASM circuits run on Qiskit Aer in a warm worker pool.

Importing this package does not import Qiskit; the modules that need it import it lazily.
`SamplerV2`, `EstimatorV2` and `CumuloJob` (Qiskit's V2 primitives on a cumulo platform) load
`cumulo.quantum.primitives`, and with it Qiskit, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cumulo.quantum.sdk import QuantumJobError

if TYPE_CHECKING:
    from cumulo.quantum.primitives import CumuloJob, EstimatorV2, SamplerV2

__all__ = ["CumuloJob", "EstimatorV2", "QuantumJobError", "SamplerV2"]

_LAZY = frozenset({"CumuloJob", "EstimatorV2", "SamplerV2"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from cumulo.quantum import primitives

        return getattr(primitives, name)
    raise AttributeError(f"module 'cumulo.quantum' has no attribute {name!r}")
