"""Estimator PUBs: expectation values of known states, within their standard errors."""

from __future__ import annotations

import math

import httpx

from tests.quantum.circuits import BELL_STATE_QASM3
from tests.quantum.conftest import run_job

RY_STATE = """OPENQASM 3.0;
include "stdgates.inc";
input float[64] theta;
qubit[1] q;
ry(theta) q[0];
"""


def within(ev: float, exact: float, std: float) -> bool:
    # Four standard errors, plus float rounding for the exact (std 0) cases.
    return abs(ev - exact) <= 4 * std + 1e-9


def test_bell_state_expectation_values_exact(http: httpx.Client) -> None:
    body = {"pubs": [{"circuit": BELL_STATE_QASM3, "observables": ["ZZ", "XX", "YY", "ZI"]}]}
    job = run_job(http, body)
    assert job["state"] == "succeeded", job["error"]
    pub = job["result"]["pubs"][0]
    assert pub["kind"] == "estimator"
    assert pub["shape"] == [4]
    for ev, exact in zip(pub["evs"], [1.0, 1.0, -1.0, 0.0], strict=True):
        assert math.isclose(ev, exact, abs_tol=1e-9)
    assert pub["stds"] == [0.0, 0.0, 0.0, 0.0]


def test_sampled_estimates_within_their_std(http: httpx.Client) -> None:
    thetas = [0.0, 0.7, 1.5707963267948966, 2.5, 3.141592653589793]
    body = {
        "pubs": [
            {
                "circuit": RY_STATE,
                "observables": [["Z"], ["X"], [{"Z": 0.5, "X": 0.5}]],
                "parameter_values": [[t] for t in thetas],
                "precision": 0.02,
            }
        ],
        "seed": 11,
    }
    job = run_job(http, body)
    assert job["state"] == "succeeded", job["error"]
    pub = job["result"]["pubs"][0]
    assert pub["shape"] == [3, 5]
    assert pub["metadata"]["shots_per_term"] == 2500
    exact = [
        [math.cos(t) for t in thetas],
        [math.sin(t) for t in thetas],
        [0.5 * (math.cos(t) + math.sin(t)) for t in thetas],
    ]
    for row in range(3):
        for col in range(5):
            ev, std = pub["evs"][row][col], pub["stds"][row][col]
            assert std <= 0.02 + 1e-12
            assert within(ev, exact[row][col], std), (row, col, ev, exact[row][col], std)
    # Not exact: a precision asks for shot noise, and gets it.
    assert any(s > 0 for s in pub["stds"][1])
    again = run_job(http, body)["result"]["pubs"][0]
    assert again["evs"] == pub["evs"]


def test_estimator_with_stabilizer_and_mixed_job(http: httpx.Client) -> None:
    body = {
        "pubs": [
            {"circuit": BELL_STATE_QASM3, "observables": {"ZZ": 2.0, "II": -1.0}},
            {
                "circuit": BELL_STATE_QASM3.replace("cx q[0], q[1];", "cx q[0], q[1];\nbit[2] c;")
                + "c = measure q;\n",
                "shots": 10,
            },
        ],
        "seed": 1,
    }
    job = run_job(http, body)
    assert job["method"] == "stabilizer"
    estimator, sampler = job["result"]["pubs"]
    assert estimator["shape"] == []
    assert math.isclose(estimator["evs"], 1.0, abs_tol=1e-9)
    assert set(sampler["data"]["c"]["counts"]) <= {"00", "11"}
