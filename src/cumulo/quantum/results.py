"""The result schema (versioned) and the conversions from Aer's raw output into it.

Schema `cumulo.quantum.result/v1`::

    {"schema": "cumulo.quantum.result/v1",
     "pubs": [
       {"kind": "sampler", "shape": [], "shots": 1000, "bit_order": "little",
        "data": {"c": {"num_bits": 2, "counts": {"00": 510, "11": 490},
                       "bitstrings": ["11", "00", ...]}},          # only with bitstrings=true
        "metadata": {"seed": 7, "method": "statevector", "num_qubits": 2, "time_s": 0.001}},
       {"kind": "estimator", "shape": [2], "evs": [1.0, 0.98], "stds": [0.0, 0.01],
        "precision": 0.01, "metadata": {"seed": 8, "shots_per_term": 10000, ...}}],
     "metadata": {"seed": 7, "method": "statevector", "device": "CPU", "qiskit_version": "…",
                  "qiskit_aer_version": "…", "run_time_s": 0.002, "peak_memory_bytes": …,
                  "estimated_memory_bytes": …}}

With a parameter sweep of shape S, `counts`/`bitstrings` (and `evs`/`stds`) are nested lists of
shape S; with no sweep (shape []) they are a single dict / number.

`bit_order` "little" writes register bit 0 as the rightmost character (Qiskit's order, so the
counts equal `AerSimulator` counts); "big" writes bit 0 first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SCHEMA = "cumulo.quantum.result/v1"

Registers = list[tuple[str, list[int]]]


def registers(circuit: Any) -> Registers:
    """(name, clbit indices with register bit 0 first) per classical register."""
    regs: Registers = [
        (str(reg.name), [circuit.find_bit(bit).index for bit in reg]) for reg in circuit.cregs
    ]
    covered = {i for _, indices in regs for i in indices}
    loose = [i for i in range(circuit.num_clbits) if i not in covered]
    if loose:
        names = {name for name, _ in regs}
        regs.append(("c" if "c" not in names else "bits", loose))
    return regs


def _formatter(indices: list[int], big: bool) -> Any:
    width = len(indices)
    start = indices[0] if indices else 0
    if indices == list(range(start, start + width)):
        mask = (1 << width) - 1

        def contiguous(value: int) -> str:
            text = format((value >> start) & mask, f"0{width}b")
            return text[::-1] if big else text

        return contiguous

    def scattered(value: int) -> str:
        text = "".join("1" if (value >> i) & 1 else "0" for i in reversed(indices))
        return text[::-1] if big else text

    return scattered


def split_counts(hex_counts: dict[str, int], regs: Registers, big: bool) -> dict[str, Any]:
    """Aer's {"0x3": n} over all clbits → {register: {bitstring: n}}."""
    out: dict[str, Any] = {}
    values = [(int(key, 16), n) for key, n in hex_counts.items()]
    for name, indices in regs:
        fmt = _formatter(indices, big)
        counts: dict[str, int] = {}
        for value, n in values:
            key = fmt(value)
            counts[key] = counts.get(key, 0) + n
        out[name] = counts
    return out


def split_memory(hex_memory: Sequence[str], regs: Registers, big: bool) -> dict[str, list[str]]:
    values = [int(key, 16) for key in hex_memory]
    out: dict[str, list[str]] = {}
    for name, indices in regs:
        fmt = _formatter(indices, big)
        out[name] = [fmt(v) for v in values]
    return out


def nest(items: list[Any], shape: Sequence[int]) -> Any:
    """A flat list in C order → nested lists of `shape` (the item itself for shape [])."""
    if not shape:
        return items[0]
    if len(shape) == 1:
        return list(items)
    step = math.prod(shape[1:])
    return [nest(items[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def estimates(
    exact: np.ndarray[Any, Any],
    terms: Sequence[Sequence[tuple[int, float]]],
    obs_shape: Sequence[int],
    param_shape: Sequence[int],
    shape: Sequence[int],
    precision: float,
    seed: int,
) -> tuple[Any, Any, int]:
    """Expectation values and standard errors, broadcast over observables × bindings.

    `exact[b, j]` is ⟨P_j⟩ for binding b. With precision ε > 0 each Pauli is "measured"
    ⌈1/ε²⌉ times: outcomes ±1 are drawn with P(+1) = (1+⟨P⟩)/2 — the distribution a real
    measurement in P's eigenbasis has — so the estimates and their standard errors behave like
    hardware's, reproducibly for a seed. ε = 0 returns the exact values with std 0.
    """
    shots = 0
    if precision > 0:
        shots = math.ceil(precision**-2)
        rng = np.random.default_rng(seed)
        p_plus = np.clip((1.0 + exact) / 2.0, 0.0, 1.0)
        sampled = 2.0 * rng.binomial(shots, p_plus) / shots - 1.0
        variance = (1.0 - sampled**2) / shots
    else:
        sampled = exact
        variance = np.zeros_like(exact)
    obs_index = np.arange(math.prod(obs_shape)).reshape(tuple(obs_shape))
    par_index = np.arange(math.prod(param_shape)).reshape(tuple(param_shape))
    by_obs, by_par = np.broadcast_arrays(obs_index, par_index)
    evs: list[float] = []
    stds: list[float] = []
    for o, b in zip(by_obs.ravel().tolist(), by_par.ravel().tolist(), strict=True):
        evs.append(float(sum(c * sampled[b, j] for j, c in terms[o])))
        stds.append(math.sqrt(float(sum(c * c * variance[b, j] for j, c in terms[o]))))
    if tuple(by_obs.shape) != tuple(shape):  # pragma: no cover - prepare computed the same
        raise ValueError("broadcast shape mismatch")
    return nest(evs, shape), nest(stds, shape), shots
