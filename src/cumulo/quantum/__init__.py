"""Quantum jobs: OpenQASM circuits run on Qiskit Aer in a warm worker pool.

Importing this package does not import Qiskit; the modules that need it import it lazily.
`SamplerV2`, `EstimatorV2` and `CumuloJob` (Qiskit's V2 primitives on a cumulo platform) load
`cumulo.quantum.primitives`, and with it Qiskit, on first use; `CumuloBackend` and
`CumuloBackendJob` (a Qiskit BackendV2 and its JobV1) load `cumulo.quantum.backend`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cumulo.quantum.sdk import QuantumJobError

if TYPE_CHECKING:
    from cumulo.quantum.backend import CumuloBackend, CumuloBackendJob
    from cumulo.quantum.primitives import CumuloJob, EstimatorV2, SamplerV2

__all__ = [
    "CumuloBackend",
    "CumuloBackendJob",
    "CumuloJob",
    "EstimatorV2",
    "QuantumJobError",
    "SamplerV2",
]

_LAZY = {
    "CumuloJob": "primitives",
    "EstimatorV2": "primitives",
    "SamplerV2": "primitives",
    "CumuloBackend": "backend",
    "CumuloBackendJob": "backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"cumulo.quantum.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cumulo.quantum' has no attribute {name!r}")
