"""Quantum jobs: OpenQASM circuits run on Qiskit Aer in a warm worker pool.

Importing this package does not import Qiskit; the modules that need it import it lazily.
"""
